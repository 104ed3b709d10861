"""The toy world's task: multi-step integer arithmetic with one operation per step.

A problem is an expression over small integers; its reference solution performs one operation per
step, steps separated by a blank line, and ends with an ``Answer:`` step::

    question:  "7 * 3 + 4 - 5"
    prompt:    "7 * 3 + 4 - 5\\n\\n"                         (see :func:`prompt_text`)
    solution:  "7 * 3 = 21\\n\\n21 + 4 = 25\\n\\n25 - 5 = 20\\n\\nAnswer: 20"

Difficulty is set by :class:`ToyConfig` (number of operations, operand range, operators, precedence,
bounds on every intermediate value); :data:`DIFFICULTIES` holds named presets. The default keeps
operands in 1..9 and every intermediate result in 0..99, so each step is a one-digit operation on a
running value below 100: tiny character-level models (DESIGN.md §2) can learn the format and most of
the arithmetic, and their errors sit on identifiable result digits.

- Generation is seeded and reproducible (``random.Random`` with a string seed, which is stable across
  Python versions and platforms).
- Train/test membership is a function of the problem itself: ``sha256("<precedence>|<expression>")``
  mapped to [0, 1) and compared with ``test_fraction``. The same expression is therefore always in
  the same split, whatever the seed, so the two splits can never overlap (for a fixed
  ``test_fraction``; a larger fraction moves some former training problems into the test split).
- :func:`check_solution` grades a model's solution step by step and says which step is the first
  wrong one (and why), accepting any legal evaluation order under standard precedence.
- **Labelled chains** (``ToyConfig(labels=True)``, left-to-right only): each operation of the question
  carries a letter and every step repeats it, so a model finds the operand of step k by matching a label
  instead of counting positions, which keeps long chains (8-12 operations) learnable by tiny models::

      question:  "7 a*3 b+4 c-5"
      solution:  "a 7 * 3 = 21\n\nb 21 + 4 = 25\n\nc 25 - 5 = 20\n\nAnswer: 20"

- :func:`build_tokenizer` / :func:`save_tokenizer` make the character-level tokenizer (printable ASCII
  plus ``<pad> <s> </s> <unk>``) that the toy models ship with.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from roro_jax.tasks.problem import Problem
from roro_jax.tokenizer import load_tokenizer  # noqa: F401 - the loader of save_tokenizer's folders

STEP_SEP = "\n\n"
ANSWER_PREFIX = "Answer: "
SOURCE = "toy"

# operator -> (precedence, function); "/" is exact integer division (the generator only emits it
# when the division leaves no remainder).
OPERATORS = {
    "+": (1, operator.add),
    "-": (1, operator.sub),
    "*": (2, operator.mul),
    "/": (2, None),
}
PRECEDENCE_MODES = ("left_to_right", "standard")
LABELS = "abcdefghijklmnopqrstuvwxyz"  # operation labels of labelled chains, in order


@dataclass(frozen=True)
class ToyConfig:
    """Difficulty of the toy task.

    Attributes:
      min_ops, max_ops: number of operations per problem (uniform in the closed range).
      operand_min, operand_max: range of every operand written in the question.
      operators: the operators to draw from (subset of ``"+-*/"``).
      precedence: ``"left_to_right"`` (evaluate strictly left to right; the question means
        ``((a op b) op c) ...``) or ``"standard"`` (``*`` and ``/`` before ``+`` and ``-``,
        left-associative; the reference takes the leftmost legal operation first).
      min_value, max_value: bounds on every intermediate result and the answer (problems that
        leave them are never generated).
      test_fraction: share of the problem space in the test split (by hash).
      labels: labelled chains (see the module docstring); left-to-right only, at most 26 operations.
    """

    min_ops: int = 2
    max_ops: int = 4
    operand_min: int = 1
    operand_max: int = 9
    operators: str = "+-*"
    precedence: str = "left_to_right"
    min_value: int = 0
    max_value: int = 99
    test_fraction: float = 0.1
    labels: bool = False

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"ToyConfig: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not self.operand_min <= self.operand_max:
            raise ValueError("ToyConfig: operand_min > operand_max")
        if self.operand_min < 0:
            raise ValueError("ToyConfig: operands must be >= 0 (the question has no unary minus)")
        if not self.operators or any(o not in OPERATORS for o in self.operators):
            raise ValueError(f"ToyConfig: operators must be a non-empty subset of '+-*/', got "
                             f"{self.operators!r}")
        if len(set(self.operators)) != len(self.operators):
            raise ValueError(f"ToyConfig: repeated operator in {self.operators!r}")
        if self.precedence not in PRECEDENCE_MODES:
            raise ValueError(f"ToyConfig: precedence must be one of {PRECEDENCE_MODES}, got "
                             f"{self.precedence!r}")
        if not self.min_value <= self.max_value:
            raise ValueError("ToyConfig: min_value > max_value")
        if not (self.min_value <= self.operand_max and self.operand_min <= self.max_value):
            raise ValueError("ToyConfig: no operand lies within [min_value, max_value]")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"ToyConfig: test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.labels and (self.precedence != "left_to_right" or self.max_ops > len(LABELS)):
            raise ValueError(f"ToyConfig: labels need precedence 'left_to_right' and max_ops <= {len(LABELS)}")

    def to_dict(self) -> dict:
        """The fields as a dict; ``labels`` only when set (task files written before it existed stay equal)."""
        d = asdict(self)
        if not d["labels"]:
            del d["labels"]
        return d


# Named presets. "default" is the one the shipped toy models are meant for: the small model should
# land at 35-75% accuracy and the large one above 90% (DESIGN.md §2); "easy"/"hard" bracket it.
DIFFICULTIES: dict[str, ToyConfig] = {
    "easy": ToyConfig(min_ops=2, max_ops=3, operators="+-", max_value=50),
    "default": ToyConfig(),
    "medium": ToyConfig(min_ops=2, max_ops=5),
    "hard": ToyConfig(min_ops=2, max_ops=5, operand_max=20, operators="+-*/", precedence="standard",
                      max_value=199),
    # labelled chains of 2-12 operations (the worlds of roro_jax.worlds.toy_variants train on these)
    "chain": ToyConfig(min_ops=2, max_ops=12, operators="+-", max_value=50, labels=True),
}


def difficulty(name: str = "default", **overrides) -> ToyConfig:
    """A named preset from :data:`DIFFICULTIES`, with field overrides (``difficulty("default", max_ops=5)``)."""
    try:
        base = DIFFICULTIES[name]
    except KeyError:
        raise KeyError(f"unknown toy difficulty {name!r}; known: {sorted(DIFFICULTIES)}") from None
    return replace(base, **overrides)


# ----------------------------------------------------------------------------------------------
# Expressions and their evaluation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reduction:
    """One step: ``left op right = result``, applied at operator position ``pos`` (``label`` + a space in
    front for labelled chains)."""

    pos: int
    left: int
    op: str
    right: int
    result: int
    label: str = ""

    @property
    def text(self) -> str:
        head = f"{self.label} " if self.label else ""
        return f"{head}{self.left} {self.op} {self.right} = {self.result}"


def apply_op(a: int, op: str, b: int) -> int | None:
    """``a op b`` on integers; None for a division by zero or with a remainder."""
    if op == "/":
        if b == 0 or a % b:
            return None
        return a // b
    return OPERATORS[op][1](a, b)


def legal_positions(ops: Sequence[str], precedence: str) -> list[int]:
    """Operator positions that may be evaluated next (left-associative, ``*``/``/`` bind tighter).

    Position i (combining values i and i+1) is legal under standard precedence iff the operator on
    its left binds strictly less tightly and the one on its right no more tightly.
    """
    if not ops:
        return []
    if precedence == "left_to_right":
        return [0]
    prec = [OPERATORS[o][0] for o in ops]
    return [i for i in range(len(ops))
            if (i == 0 or prec[i - 1] < prec[i]) and (i == len(ops) - 1 or prec[i + 1] <= prec[i])]


def reduce_at(values: list[int], ops: list[str], pos: int) -> tuple[list[int], list[str], Reduction | None]:
    a, op, b = values[pos], ops[pos], values[pos + 1]
    c = apply_op(a, op, b)
    if c is None:
        return values, ops, None
    return (values[:pos] + [c] + values[pos + 2:], ops[:pos] + ops[pos + 1:],
            Reduction(pos, a, op, b, c))


def evaluate(values: Sequence[int], ops: Sequence[str], precedence: str = "left_to_right",
             bounds: tuple[int, int] | None = None, labels: bool = False) -> list[Reduction] | None:
    """The reference evaluation order (leftmost legal operation first) as a list of reductions.

    None if an operation is an inexact division or a result leaves ``bounds`` (inclusive). With
    ``labels`` (left-to-right only) reduction i carries label ``LABELS[i]``.
    """
    if labels and precedence != "left_to_right":
        raise ValueError("labelled chains are evaluated left to right")
    values, ops = list(values), list(ops)
    if len(values) != len(ops) + 1:
        raise ValueError(f"{len(values)} values need {len(values) - 1} operators, got {len(ops)}")
    out = []
    while ops:
        values, ops, red = reduce_at(values, ops, legal_positions(ops, precedence)[0])
        if red is None or (bounds is not None and not bounds[0] <= red.result <= bounds[1]):
            return None
        out.append(replace(red, label=LABELS[len(out)]) if labels else red)
    return out


def format_expression(values: Sequence[int], ops: Sequence[str], labels: bool = False) -> str:
    """``"7 * 3 + 4"``; labelled: ``"7 a*3 b+4"``."""
    if labels:
        return str(values[0]) + "".join(f" {LABELS[i]}{o}{v}" for i, (o, v) in enumerate(zip(ops, values[1:])))
    parts = [str(values[0])]
    for o, v in zip(ops, values[1:]):
        parts += [o, str(v)]
    return " ".join(parts)


_TOKEN_RE = re.compile(r"\s*(\d+|[+\-*/])")
_LABELLED_RE = re.compile(r"^(\d+)((?:\s+[a-z][+\-*/]\d+)+)$")
_LABELLED_OP_RE = re.compile(r"\s+([a-z])([+\-*/])(\d+)")


def is_labelled(text: str) -> bool:
    """Whether a toy question is a labelled chain (``"7 a*3 b+4"``)."""
    return any("a" <= ch <= "z" for ch in text)


def parse_expression(text: str) -> tuple[list[int], list[str]]:
    """``"7 * 3 + 4"`` (or labelled ``"7 a*3 b+4"``) -> ``([7, 3, 4], ["*", "+"])``; ValueError on anything
    else (labels must run a, b, c, ...)."""
    text = text.strip()
    if is_labelled(text):
        m = _LABELLED_RE.match(text)
        if not m:
            raise ValueError(f"not a labelled toy expression: {text!r}")
        found = _LABELLED_OP_RE.findall(m.group(2))
        if "".join(lab for lab, _, _ in found) != LABELS[:len(found)]:
            raise ValueError(f"not a labelled toy expression: {text!r} (labels must run a, b, c, ...)")
        return [int(m.group(1))] + [int(v) for _, _, v in found], [o for _, o, _ in found]
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise ValueError(f"not a toy expression: {text!r} (at column {pos})")
        toks.append(m.group(1))
        pos = m.end()
    if len(toks) < 3 or len(toks) % 2 == 0:
        raise ValueError(f"not a toy expression: {text!r}")
    values, ops = toks[0::2], toks[1::2]
    if not all(v.isdigit() for v in values) or not all(o in OPERATORS for o in ops):
        raise ValueError(f"not a toy expression: {text!r}")
    return [int(v) for v in values], list(ops)


def solution_text(reductions: Sequence[Reduction]) -> str:
    """Reference solution: one operation per step, then ``Answer: N``, joined by blank lines."""
    return STEP_SEP.join([r.text for r in reductions] + [f"{ANSWER_PREFIX}{reductions[-1].result}"])


def prompt_text(problem: Problem) -> str:
    """What the toy models are conditioned on: the question, then a blank line (no BOS; the
    tokenizer adds it)."""
    return problem.question + STEP_SEP


def training_text(problem: Problem) -> str:
    """Prompt + reference solution: the text the toy models are trained on (EOS appended by callers)."""
    if problem.solution is None:
        raise ValueError(f"problem {problem.id} has no reference solution")
    return prompt_text(problem) + problem.solution


# ----------------------------------------------------------------------------------------------
# Splits and generation
# ----------------------------------------------------------------------------------------------


def canonical_key(expression: str, precedence: str) -> str:
    values, ops = parse_expression(expression)
    return f"{precedence}|{format_expression(values, ops, is_labelled(expression))}"


def split_of(expression: str, precedence: str = "left_to_right", test_fraction: float = 0.1) -> str:
    """``"test"`` or ``"train"``: a pure function of the canonical problem (never of a seed)."""
    h = hashlib.sha256(canonical_key(expression, precedence).encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    return "test" if u < test_fraction else "train"


def make_problem(values: Sequence[int], ops: Sequence[str], cfg: ToyConfig = ToyConfig(),
                 split: str | None = None) -> Problem:
    """A Problem for a given expression (its reference solution computed under ``cfg.precedence``)."""
    reds = evaluate(values, ops, cfg.precedence, labels=cfg.labels)
    if reds is None:
        raise ValueError(f"{format_expression(values, ops)}: inexact division")
    expr = format_expression(values, ops, cfg.labels)
    key = canonical_key(expr, cfg.precedence)
    pid = "toy-" + hashlib.sha1(key.encode()).hexdigest()[:12]
    split = split or split_of(expr, cfg.precedence, cfg.test_fraction)
    meta = {"precedence": cfg.precedence, "n_ops": len(ops), "split": split}
    if cfg.labels:
        meta["labels"] = True
    return Problem(pid, expr, str(reds[-1].result), SOURCE, solution_text(reds), meta)


@functools.lru_cache(maxsize=65536)
def _valid_moves(v: int, cfg: ToyConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(operator, operands) pairs that keep ``v op b`` an exact result within the value bounds."""
    moves = []
    for o in sorted(cfg.operators):
        bs = tuple(b for b in range(cfg.operand_min, cfg.operand_max + 1)
                   if (c := apply_op(v, o, b)) is not None and cfg.min_value <= c <= cfg.max_value)
        if bs:
            moves.append((o, bs))
    return tuple(moves)


def _sample_expression(rng: random.Random, cfg: ToyConfig, max_tries: int = 1000):
    """One valid expression. The number of operations is drawn first, uniformly, and kept.

    ``left_to_right``: built operation by operation; each operator is drawn uniformly among those that
    have a valid operand for the running value, then the operand uniformly among the valid ones.
    ``standard``: operators and operands drawn uniformly and the whole expression redrawn until every
    step of its reference evaluation is valid (exact division, results within bounds).
    """
    n = rng.randint(cfg.min_ops, cfg.max_ops)
    lo, hi = max(cfg.operand_min, cfg.min_value), min(cfg.operand_max, cfg.max_value)
    for _ in range(max_tries):
        if cfg.precedence == "left_to_right":
            v = rng.randint(lo, hi)
            values, ops = [v], []
            for _ in range(n):
                moves = _valid_moves(v, cfg)
                if not moves:
                    break
                o, bs = rng.choice(moves)
                b = rng.choice(bs)
                values.append(b)
                ops.append(o)
                v = apply_op(v, o, b)
            if len(ops) == n:
                return values, ops
        else:
            values = [rng.randint(cfg.operand_min, cfg.operand_max) for _ in range(n + 1)]
            ops = [rng.choice(cfg.operators) for _ in range(n)]
            if evaluate(values, ops, cfg.precedence, (cfg.min_value, cfg.max_value)) is not None:
                return values, ops
    raise RuntimeError(f"toy generator: no valid {n}-operation expression in {max_tries} tries; the "
                       f"config is too restrictive: {cfg}")


def iter_problems(cfg: ToyConfig = ToyConfig(), *, seed: int = 0, split: str = "train",
                  unique: bool = False) -> Iterator[Problem]:
    """An endless, reproducible stream of problems of one split (``"train"`` | ``"test"`` | ``"all"``).

    With ``unique=True`` no problem repeats (the stream ends with RuntimeError once the split's problem
    space looks exhausted: 100,000 draws in a row without a new problem).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    rng = random.Random(f"roro-toy:{seed}:{split}")
    seen: set[str] = set()
    misses = 0
    while True:
        values, ops = _sample_expression(rng, cfg)
        expr = format_expression(values, ops, cfg.labels)
        s = split_of(expr, cfg.precedence, cfg.test_fraction)
        if split != "all" and s != split:
            continue
        if unique:
            if expr in seen:
                misses += 1
                if misses > 100_000:
                    raise RuntimeError(f"toy generator: {split} split exhausted after {len(seen)} "
                                       f"unique problems under {cfg}")
                continue
            seen.add(expr)
            misses = 0
        yield make_problem(values, ops, cfg, s)


def generate(n: int, cfg: ToyConfig = ToyConfig(), *, seed: int = 0, split: str = "train",
             unique: bool = True) -> list[Problem]:
    """``n`` problems of ``split``, reproducible from ``(cfg, seed, split)``; distinct by default."""
    if n < 0:
        raise ValueError("n must be >= 0")
    it = iter_problems(cfg, seed=seed, split=split, unique=unique)
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------------------------
# Step-level checking
# ----------------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"^(?:([a-z])\s+)?(-?\d+)\s*([+\-*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*\.?$")
_ANSWER_RE = re.compile(r"^Answer:\s*(-?\d+)\s*\.?$")

# Verdicts for one step.
OK = "ok"
VERDICTS = {
    "ok": "the step is right",
    "format": "not of the form 'a op b = c' (or 'Answer: N' once all operations are done)",
    "operand": "the operation 'a op b' does not occur in the current expression",
    "order": "the operation occurs but may not be evaluated yet (precedence / left-to-right order)",
    "arithmetic": "the right operation with a wrong result",
    "premature_answer": "an 'Answer:' step while operations remain",
    "answer": "'Answer: N' with the wrong N",
    "extra": "a step after the solution was complete",
    "unchecked": "after the first wrong step (not checked)",
}


@dataclass(frozen=True)
class StepCheck:
    """Step-by-step verdict on a model's toy solution.

    Attributes:
      steps: the model's steps as checked.
      verdicts: one per step, a key of :data:`VERDICTS`; steps after the first wrong one are
        ``"unchecked"``.
      first_wrong: index of the first wrong step; ``len(steps)`` when every step is right but the
        solution stops before its ``Answer:`` step; None when the whole solution is right.
      final_answer_correct: whether the final ``Answer:`` (as :func:`roro_jax.tasks.grade` reads it)
        equals the gold answer, whatever the steps (a wrong path can land on the right number).
      n_reference_steps: steps in the reference solution (operations + the Answer step).
    """

    steps: tuple[str, ...]
    verdicts: tuple[str, ...]
    first_wrong: int | None
    final_answer_correct: bool
    n_reference_steps: int
    reasons: tuple[str, ...] = field(default=())

    @property
    def correct(self) -> bool:
        return self.first_wrong is None

    @property
    def step_correct(self) -> list[bool]:
        """Per model step: True for steps before the first wrong one."""
        fw = len(self.steps) if self.first_wrong is None else self.first_wrong
        return [i < fw for i in range(len(self.steps))]


def split_steps(text: str) -> list[str]:
    """Blank-line separated steps, stripped, empty ones dropped."""
    return [s.strip() for s in text.split(STEP_SEP) if s.strip()]


def check_solution(problem: Problem, solution: str | Sequence[str], *,
                   precedence: str | None = None) -> StepCheck:
    """Check a model's solution of a toy problem step by step.

    ``solution`` is the generated text (split on blank lines, empty pieces dropped) or a list of
    steps as the rollout recorded them (checked as given; an empty one is a ``"format"`` error).
    Every operation step must be ``a op b = c`` where ``a op b`` is an operation that may be
    evaluated next in the current expression (any legal order is accepted under standard
    precedence) and ``c`` is its result; after the last operation comes ``Answer: N``.
    The precedence is the problem's (``problem.meta["precedence"]``) unless given.
    """
    prec = precedence or problem.meta.get("precedence", "left_to_right")
    if prec not in PRECEDENCE_MODES:
        raise ValueError(f"unknown precedence {prec!r}")
    values, ops = parse_expression(problem.question)
    labelled = is_labelled(problem.question)
    n_ref = len(ops) + 1
    steps = split_steps(solution) if isinstance(solution, str) else [str(s).strip() for s in solution]
    verdicts: list[str] = []
    reasons: list[str] = []
    first_wrong: int | None = None
    answered = False
    for i, s in enumerate(steps):
        if first_wrong is not None:
            verdicts.append("unchecked")
            reasons.append("")
            continue
        m_op, m_ans = _STEP_RE.match(s), _ANSWER_RE.match(s)
        verdict, reason = OK, ""
        if answered:
            verdict, reason = "extra", "the solution already gave its answer"
        elif ops:
            if m_ans:
                verdict, reason = "premature_answer", f"{len(ops)} operation(s) remain"
            elif not m_op:
                verdict, reason = "format", f"expected 'a op b = c', got {s!r}"
            elif (m_op.group(1) or "") != (LABELS[n_ref - 1 - len(ops)] if labelled else ""):
                want = LABELS[n_ref - 1 - len(ops)] if labelled else ""
                verdict, reason = "format", (f"expected the label {want!r} in front of the operation, got {s!r}"
                                             if labelled else f"a label in front of an unlabelled step: {s!r}")
            else:
                a, op, b, c = int(m_op.group(2)), m_op.group(3), int(m_op.group(4)), int(m_op.group(5))
                legal = legal_positions(ops, prec)
                present = [p for p in range(len(ops)) if (values[p], ops[p], values[p + 1]) == (a, op, b)]
                pos = next((p for p in present if p in legal), None)
                if pos is None:
                    verdict = "order" if present else "operand"
                    reason = (f"'{a} {op} {b}' may not be evaluated yet" if present else
                              f"'{a} {op} {b}' is not in '{format_expression(values, ops)}'")
                else:
                    new_values, new_ops, red = reduce_at(values, ops, pos)
                    if red is None:
                        verdict, reason = "order", f"'{a} {op} {b}' is not an exact division"
                    elif red.result != c:
                        verdict, reason = "arithmetic", f"{a} {op} {b} = {red.result}, not {c}"
                    else:
                        values, ops = new_values, new_ops
        else:
            if m_ans:
                if int(m_ans.group(1)) == values[0]:
                    answered = True
                else:
                    verdict, reason = "answer", f"the answer is {values[0]}, not {m_ans.group(1)}"
            elif m_op:
                verdict, reason = "extra", "an operation after the last one"
            else:
                verdict, reason = "format", f"expected 'Answer: {values[0]}', got {s!r}"
        verdicts.append(verdict)
        reasons.append(reason)
        if verdict != OK:
            first_wrong = i
    if first_wrong is None and not answered:
        first_wrong = len(steps)
    final = next((m.group(1) for m in map(_ANSWER_RE.match, reversed(steps)) if m), None)
    final_ok = final is not None and int(final) == int(problem.answer)
    return StepCheck(tuple(steps), tuple(verdicts), first_wrong, final_ok, n_ref, tuple(reasons))


def _wrong_result(r: Reduction, delta: int) -> Reduction:
    return replace(r, result=r.result + delta)


def _wrong_operand(r: Reduction, delta: int) -> Reduction:
    return replace(r, right=r.right + delta, result=apply_op(r.left, r.op, r.right + delta))


_FLIP = {"+": "-", "-": "+"}


def _wrong_operator(r: Reduction, delta: int) -> Reduction:
    if r.op not in _FLIP:
        raise ValueError(f"corrupted_solution: kind 'operator' flips + and -, got {r.op!r}")
    return replace(r, op=_FLIP[r.op], result=apply_op(r.left, _FLIP[r.op], r.right))


#: How a corrupted step goes wrong (:func:`corrupted_solution`'s ``kind``): ``result`` = the arithmetic is
#: off by ``delta``; ``operand`` = the right operand is off by ``delta`` and the arithmetic on it is right
#: (the small models' commonest slip: a misread question); ``operator`` = ``+`` and ``-`` swapped, the
#: arithmetic right (``delta`` unused).
CORRUPTIONS: dict[str, Callable[[Reduction, int], Reduction]] = {
    "result": _wrong_result, "operand": _wrong_operand, "operator": _wrong_operator}


def corrupted_solution(problem: Problem, at: int, delta: int, *, repair: bool, kind: str = "result"
                       ) -> tuple[list[str], list[str]]:
    """A left-to-right solution whose step ``at`` is wrong, and how it goes on.

    Returns ``(prefix, continuation)``: ``prefix`` = the reference steps up to ``at`` with step ``at``
    corrupted as ``kind`` says (:data:`CORRUPTIONS`: its result off by ``delta``, its right operand off by
    ``delta``, or its operator swapped); ``continuation`` = the steps after it, ending with ``Answer: N``:
    with ``repair`` the reference steps (the running value recomputed from the question, so the final
    answer is right although a wrong step was written; when ``at`` is the last operation, only the right
    ``Answer:``), otherwise the remaining operations applied to the wrong value (the written prefix
    trusted). This is how the *lucky* world's large model was trained to continue a wrong prefix
    (:mod:`roro_jax.worlds.variants`).
    """
    values, ops = parse_expression(problem.question)
    if problem.meta.get("precedence", "left_to_right") != "left_to_right":
        raise ValueError("corrupted_solution: left-to-right problems only")
    if kind not in CORRUPTIONS:
        raise ValueError(f"corrupted_solution: unknown kind {kind!r}; known: {sorted(CORRUPTIONS)}")
    if not 0 <= at < len(ops) or (delta == 0 and kind != "operator"):
        raise ValueError(f"corrupted_solution: need 0 <= at < {len(ops)} and delta != 0, got {at}, {delta}")
    reds = evaluate(values, ops, labels=is_labelled(problem.question))
    wrong = CORRUPTIONS[kind](reds[at], delta)
    prefix = [r.text for r in reds[:at]] + [wrong.text]
    if repair:
        cont = [r.text for r in reds[at + 1:]] + [f"{ANSWER_PREFIX}{reds[-1].result}"]
        return prefix, cont
    v = wrong.result
    cont = []
    for r in reds[at + 1:]:
        c = apply_op(v, r.op, r.right)
        cont.append(replace(r, left=v, result=c).text)
        v = c
    return prefix, cont + [f"{ANSWER_PREFIX}{v}"]


def summarize_checks(checks: Sequence[StepCheck]) -> dict:
    """Aggregate step checks of many solutions: accuracy, where and how solutions first go wrong.

    Returns ``accuracy`` (share of fully right solutions), ``final_answer_accuracy`` (share whose
    ``Answer:`` is right, what :func:`roro_jax.tasks.grade` measures), ``step_accuracy`` (share of
    checked steps that are right, counting each solution's steps up to its first wrong one),
    ``first_wrong_hist`` (first wrong step index -> count) and ``error_kinds`` (verdict of the first
    wrong step -> count; ``"missing"`` for solutions that stop early).
    """
    n = len(checks)
    if n == 0:
        raise ValueError("summarize_checks: no checks")
    hist: dict[int, int] = {}
    kinds: dict[str, int] = {}
    right = checked = 0
    for c in checks:
        fw = c.first_wrong
        right += len(c.steps) if fw is None else fw
        checked += len(c.steps) if fw is None else min(fw + 1, len(c.steps))
        if fw is not None:
            hist[fw] = hist.get(fw, 0) + 1
            k = c.verdicts[fw] if fw < len(c.steps) else "missing"
            kinds[k] = kinds.get(k, 0) + 1
    return {
        "n": n,
        "accuracy": sum(c.correct for c in checks) / n,
        "final_answer_accuracy": sum(c.final_answer_correct for c in checks) / n,
        "step_accuracy": right / checked if checked else 0.0,
        "first_wrong_hist": dict(sorted(hist.items())),
        "error_kinds": dict(sorted(kinds.items())),
    }


def heldout(n: int = 500, cfg: ToyConfig = ToyConfig(), *, seed: int = 0) -> list[Problem]:
    """The standard held-out evaluation set: ``n`` distinct test-split problems (seed 0)."""
    return generate(n, cfg, seed=seed, split="test", unique=True)


# ----------------------------------------------------------------------------------------------
# Character-level tokenizer
# ----------------------------------------------------------------------------------------------

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
# "\n" and " " first, then printable ASCII 33..126, then tab: 97 characters (ids 4..100).
DEFAULT_ALPHABET = "\n " + "".join(chr(c) for c in range(33, 127)) + "\t"


def build_tokenizer(alphabet: str = DEFAULT_ALPHABET, *, add_bos: bool = True):
    """A character-level ``PreTrainedTokenizerFast``: one token per character of ``alphabet``.

    Built with ``tokenizers``: a WordLevel vocabulary (specials ``<pad>=0 <s>=1 </s>=2 <unk>=3``, then
    the alphabet in order), a ``Split("", "isolated")`` pre-tokenizer (every character is its own
    piece, whitespace and newlines included) and a ``Fuse`` decoder, so that
    ``decode(encode(text), skip_special_tokens=True) == text`` for any text over the alphabet
    (characters outside it become ``<unk>``). With ``add_bos`` the post-processor prepends ``<s>``
    when special tokens are requested (the default of ``__call__``/``encode``), as Llama's does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if len(set(alphabet)) != len(alphabet):
        raise ValueError("build_tokenizer: the alphabet has repeated characters")
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False,
                                   model_input_names=["input_ids", "attention_mask"])


def save_tokenizer(folder: str | Path, tokenizer=None) -> Path:
    """Write ``tokenizer.json`` (+ ``tokenizer_config.json``) into ``folder``; returns the json path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (tokenizer or build_tokenizer()).save_pretrained(str(folder))
    path = folder / "tokenizer.json"
    if not path.exists():
        raise RuntimeError(f"save_tokenizer: {path} was not written")
    return path


# ------------------------------------------------------------------------------- routed trajectories ---
def step_labels(problem: Problem, steps: Sequence) -> dict:
    """``first_wrong_step`` of a routed trajectory's steps (:class:`roro_jax.types.Step`) and
    ``wrong_steps`` (steps whose *small* proposal was wrong while the route before them was right), in
    trajectory step indices; from :func:`check_solution`."""
    from roro_jax.types import ESCALATE

    idx = [i for i, s in enumerate(steps) if s.text.strip()]  # empty steps never entered the context
    texts = [steps[i].text for i in idx]
    chk = check_solution(problem, texts)
    fw = chk.first_wrong
    first_wrong = None if fw is None else (idx[fw] if fw < len(idx) else len(steps))
    wrong = []
    limit = len(idx) if fw is None else min(fw + 1, len(idx))
    for j in range(limit):
        s = steps[idx[j]]
        proposal = s.small_text if s.action == ESCALATE and s.small_text is not None else s.text
        if s.action == ESCALATE and not proposal.strip():
            wrong.append(idx[j])  # an empty proposal at a position that needed a step
            continue
        v = check_solution(problem, texts[:j] + [proposal]).verdicts[j]
        if v != "ok":
            wrong.append(idx[j])
    return {"first_wrong_step": first_wrong, "wrong_steps": wrong, "toy_correct": chk.correct,
            "toy_final_answer_correct": chk.final_answer_correct}


def trajectory_meta(problem: Problem, steps: Sequence) -> dict:
    """What the toy world adds to a routed trajectory's meta (the rollout's ``annotate`` hook): ``world``
    and, for a toy problem, its :func:`step_labels`."""
    return {"world": "toy", **(step_labels(problem, steps) if problem.source == "toy" else {})}
