"""Rubric text format and its parser.

A rubric is a short numbered list of weighted criteria, one per line::

    1. [w=0.4] The route escalates step 3, where the small model's confidence drops.
    2. [w=0.3] Confident steps stay with the small model.
    3. [w=0.3] The large model writes the final step.

Grammar (whitespace around tokens is free, blank lines are ignored)::

    line   := NUMBER ("." | ")") "[" ("w" | "weight") "=" FLOAT "]" TEXT

Numbers must run 1, 2, 3, ... Weights must be finite and in ``(0, max_weight]``; they are normalised to
sum to 1 on parse (so a rubric's score — a weighted sum of probabilities — lies in [0, 1]). A criterion's
text must hold at least one letter or be an arithmetic checkpoint (``"7 + 5 = 12"``: numbers and operators
around one ``=``, the step a correct solution writes, which is what the toy worlds' checkpoint rubrics hold),
at most ``max_criterion_chars`` characters, no control characters,
and must not repeat another criterion of the same rubric (case-insensitively).

**The ``steps`` format** (:func:`parse_steps` / :func:`format_steps`; ``rubricor.output: steps``): one
criterion per non-blank line, no numbers and no weights (equal weights), written as a toy model writes a
solution, steps separated by a blank line::

    7 + 5 = 12

    12 - 3 = 9

A Rubricor that is the task's own solver (``toy:large``, prompt ``solve``) then writes checkpoint rubrics in
the format it learnt the arithmetic in. The criterion checks are the same. :data:`RUBRIC_FORMATS` maps
``rubricor.output`` names to formats.

:func:`parse_rubric` never raises on text: it returns a :class:`ParseResult` whose ``rubric`` is None and
``reason`` says why when the text is malformed (empty, not a string, too long, too many criteria, a bad
line, a bad weight, ...). The length check runs before any pattern matching, so adversarial inputs (huge,
unicode, binary) cost O(len) at most. In Rubricor training a malformed rubric gets the lowest reward.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

from roro_jax.types import Criterion, Rubric

_LINE = re.compile(r"^\s*(\d{1,3})\s*[.)]\s*\[\s*(?:w|weight)\s*=\s*([^\]\s]{1,24})\s*\]\s*(.*?)\s*$",
                   re.IGNORECASE)
# a criterion without letters is accepted when it is an arithmetic step: "7 + 5 = 12", "(3 - 8) * 2 = -10"
_EQUATION = re.compile(r"[\d\s.+\-*/×÷()]*\d[\d\s.+\-*/×÷()]*=\s*-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class RubricLimits:
    """What :func:`parse_rubric` accepts."""

    max_criteria: int = 6
    min_criteria: int = 1
    max_criterion_chars: int = 160
    max_total_chars: int = 2000
    max_weight: float = 1.0


@dataclass(frozen=True)
class ParseResult:
    """``rubric`` is None exactly when the text was rejected; ``reason`` is "ok" or why it was rejected."""

    rubric: Rubric | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.rubric is not None


def _has_control(s: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") for ch in s)


def parse_rubric(text, query_id: str = "", limits: RubricLimits = RubricLimits()) -> ParseResult:
    """Parse LM output into a :class:`~roro_jax.types.Rubric` (weights normalised), or reject it with a reason.

    Never raises for any ``text`` (non-strings are rejected as ``"not text"``).
    """
    lines, why = _lines(text, limits)
    if lines is None:
        return ParseResult(None, why)
    criteria: list[Criterion] = []
    seen: set[str] = set()
    for k, ln in enumerate(lines, 1):
        m = _LINE.match(ln)
        if m is None:
            return ParseResult(None, f"line {k} is not '<n>. [w=<weight>] <criterion>'")
        num, w_txt, body = m.groups()
        if int(num) != k:
            return ParseResult(None, f"line {k} is numbered {num} (criteria must be numbered 1, 2, ...)")
        try:
            w = float(w_txt)
        except ValueError:
            return ParseResult(None, f"criterion {k}: weight {w_txt!r} is not a number")
        if not math.isfinite(w) or w <= 0 or w > limits.max_weight:
            return ParseResult(None, f"criterion {k}: weight {w_txt} outside (0, {limits.max_weight:g}]")
        why = _bad_body(k, body, limits, seen)
        if why:
            return ParseResult(None, why)
        criteria.append(Criterion(body, w))
    return _finish(criteria, query_id, text, limits)


def _bad_body(k: int, body: str, limits: RubricLimits, seen: set[str]) -> str | None:
    """Why criterion ``k``'s text is rejected (None if it is accepted; its key then joins ``seen``)."""
    if not body:
        return f"criterion {k}: empty text"
    if len(body) > limits.max_criterion_chars:
        return f"criterion {k}: too long ({len(body)} > {limits.max_criterion_chars} characters)"
    if _has_control(body):
        return f"criterion {k}: non-text (control characters)"
    if not any(ch.isalpha() for ch in body) and not _EQUATION.fullmatch(body):
        return f"criterion {k}: no words (and not an arithmetic step such as '7 + 5 = 12')"
    key = " ".join(body.lower().split())
    if key in seen:
        return f"criterion {k}: repeats an earlier criterion"
    seen.add(key)
    return None


def _finish(criteria: list[Criterion], query_id, text: str, limits: RubricLimits) -> ParseResult:
    if len(criteria) < limits.min_criteria:
        return ParseResult(None, f"too few criteria ({len(criteria)} < {limits.min_criteria})")
    total = sum(c.weight for c in criteria)
    criteria = [Criterion(c.text, c.weight / total) for c in criteria]
    return ParseResult(Rubric(query_id=str(query_id), criteria=criteria, raw=text), "ok")


def _lines(text, limits: RubricLimits) -> tuple[list[str] | None, str]:
    """The non-blank lines of ``text``, or None and why it is rejected before any line is read."""
    if not isinstance(text, str):
        return None, f"not text ({type(text).__name__})"
    if len(text) > limits.max_total_chars:
        return None, f"too long ({len(text)} > {limits.max_total_chars} characters)"
    if "\x00" in text:
        return None, "non-text (NUL byte)"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None, "empty"
    if len(lines) > limits.max_criteria:
        return None, f"too many criteria ({len(lines)} lines > {limits.max_criteria})"
    return lines, "ok"


def format_rubric(rubric: Rubric, digits: int = 2) -> str:
    """The rubric as text in the grammar :func:`parse_rubric` reads (round trip up to weight rounding)."""
    return "".join(f"{i}. [w={c.weight:.{digits}f}] {c.text}\n" for i, c in enumerate(rubric.criteria, 1))


def parse_steps(text, query_id: str = "", limits: RubricLimits = RubricLimits()) -> ParseResult:
    """Parse the ``steps`` format: one criterion per non-blank line, equal weights (see the module
    docstring); the criterion checks of :func:`parse_rubric`. Never raises for any ``text``."""
    lines, why = _lines(text, limits)
    if lines is None:
        return ParseResult(None, why)
    seen: set[str] = set()
    criteria = []
    for k, ln in enumerate(lines, 1):
        body = ln.strip()
        why = _bad_body(k, body, limits, seen)
        if why:
            return ParseResult(None, why)
        criteria.append(Criterion(body, 1.0))
    return _finish(criteria, query_id, text, limits)


def format_steps(rubric: Rubric) -> str:
    """The rubric in the ``steps`` format: criterion texts separated by blank lines (weights are not
    written: :func:`parse_steps` reads equal weights)."""
    return "\n\n".join(c.text for c in rubric.criteria)


@dataclass(frozen=True)
class RubricFormat:
    """A rubric text format: ``write(rubric) -> text`` and ``parse(text, query_id, limits) -> ParseResult``
    (never raising on text; ``parse(write(r))`` gives back ``r``'s criteria)."""

    write: Callable[[Rubric], str]
    parse: Callable[..., ParseResult]


# rubricor.output -> the text format the Rubricor writes (its SFT targets and the parser of its output)
RUBRIC_FORMATS: dict[str, RubricFormat] = {
    "numbered": RubricFormat(format_rubric, parse_rubric),
    "steps": RubricFormat(format_steps, parse_steps),
}


def get_format(name: str) -> RubricFormat:
    if name not in RUBRIC_FORMATS:
        raise KeyError(f"unknown rubric format {name!r}; known: {sorted(RUBRIC_FORMATS)}")
    return RUBRIC_FORMATS[name]


def normalise_weights(rubric: Rubric) -> Rubric:
    """A copy with weights summing to 1 (uniform if they sum to 0)."""
    total = sum(max(c.weight, 0.0) for c in rubric.criteria)
    n = len(rubric.criteria)
    crit = [Criterion(c.text, (max(c.weight, 0.0) / total) if total > 0 else 1.0 / n) for c in rubric.criteria]
    return Rubric(rubric.query_id, crit, rubric.raw)


def prune_rubric(rubric: Rubric, drop: set[str]) -> Rubric:
    """Remove criteria whose (whitespace/case-normalised) text is in ``drop``; weights renormalised.

    If every criterion would go, the rubric is returned unchanged (a rubric needs a criterion).
    """
    keep = [c for c in rubric.criteria if criterion_key(c.text) not in drop]
    if not keep or len(keep) == len(rubric.criteria):
        return rubric
    return normalise_weights(Rubric(rubric.query_id, keep, rubric.raw))


def criterion_key(text: str) -> str:
    """Normalised criterion text used to pool statistics across rubrics."""
    return " ".join(text.lower().split())
