"""Final-answer extraction and equivalence grading.

``extract_answer(text)`` finds the model's final answer, in this order of preference:

1. the content of the **last** well-formed ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept);
2. the rest of the line after the last ``####`` (GSM8K style);
3. the rest of the line after the last ``Answer:`` (also ``Final answer:``, ``The answer is:``; any
   case; if that line is empty, the next non-empty line), without surrounding ``$``/``**`` and a
   trailing full stop.

``grade(model_text, gold)`` extracts the answer and calls it correct when either

- the normalised strings agree (:func:`normalize_answer`: spacing, ``$``, ``\\left``/``\\right``,
  ``\\dfrac``, ``\\text{}``, degrees, percent, thousands separators, trailing zeros), or
- ``math-verify`` says the two are mathematically equal (it parses LaTeX with sympy).

It never raises and never hangs on garbage: anything that is not a string grades wrong; inputs over
``MAX_VERIFY_CHARS`` are compared as strings only; math-verify runs with its own (signal-based) time
limits in the main thread. Signals cannot be used in other threads, so there math-verify runs without
a time limit and only on inputs that cannot blow up (no nested powers, no factorials, short); other
inputs fall back to the string comparison. For bulk grading, :func:`grade_many` can use worker
processes, whose main threads have the time limits again.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

MAX_VERIFY_CHARS = 400  # longer answers are compared as normalised strings only
VERIFY_TIMEOUT_S = 2  # math-verify parse/verify limits (whole seconds: it uses signal.alarm)

_BOX_MACROS = ("\\boxed", "\\fbox")


def _brace_matches(text: str) -> dict[int, int]:
    """Index of every ``{`` -> index of its matching ``}`` (unmatched ones absent); ``\\{`` skipped."""
    stack: list[int] = []
    out: dict[int, int] = {}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            out[stack.pop()] = i
        i += 1
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, nesting kept.

    ``\\boxed 5`` (argument without braces) is read up to the next space or ``$``. A box whose braces
    never close is skipped (an earlier well-formed one is returned instead). Linear in ``len(text)``.
    """
    if not isinstance(text, str):
        return None
    starts = sorted(m.start() for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text))
    if not starts:
        return None
    matches = _brace_matches(text)
    for i in reversed(starts):
        j = i + (len("\\boxed") if text.startswith("\\boxed", i) else len("\\fbox"))
        k = j
        while k < len(text) and text[k] in " \t":
            k += 1
        if k < len(text) and text[k] == "{":
            if k in matches:
                return text[k + 1:matches[k]]
            continue
        if k > j:  # "\boxed 5"
            m = re.match(r"[^\s$]+", text[k:])
            if m:
                return m.group(0)
    return None


_ANSWER_LINE = re.compile(r"(?i)(?:final\s+answer|the\s+answer\s+is|answer)\s*:")


def _clean_inline(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        s0 = s
        s = s.strip().strip("*").strip()
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s.strip("$")
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        s = s.rstrip(".").strip()
        if s == s0:
            break
    return s


def extract_answer(text) -> str | None:
    """The model's final answer (see the module docstring for the rules), or None if there is none."""
    if not isinstance(text, str) or not text:
        return None
    box = last_boxed(text)
    if box is not None and box.strip():
        return box.strip()
    if "####" in text:
        tail = text.rsplit("####", 1)[1].split("\n", 1)[0]
        ans = _clean_inline(tail)
        if ans:
            return ans
    hits = list(_ANSWER_LINE.finditer(text))
    if hits:
        rest = text[hits[-1].end():]
        lines = rest.split("\n")
        first = _clean_inline(lines[0])
        if first:
            return first
        for line in lines[1:]:
            ans = _clean_inline(line)
            if ans:
                return ans
    return None


_TEXT_MACRO = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # a whole answer like "1,234,567"
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d*?)0+(?!\d)")


def normalize_answer(s) -> str:
    """A canonical string form for comparing answers (no spacing or cosmetic LaTeX; lower case when
    no LaTeX command is left)."""
    if not isinstance(s, str):
        return ""
    s = _clean_inline(s)
    for _ in range(3):
        s = _TEXT_MACRO.sub(r"\1", s)
    for a, b in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"),
                 ("\\displaystyle", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""),
                 ("\\%", ""), ("%", ""), ("\\$", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                 ("\\:", ""), ("\\ ", ""), ("~", ""), ("\\cdot", "*"), ("\\times", "*")):
        s = s.replace(a, b)
    if _THOUSANDS.fullmatch(s.strip()):  # only a lone number: "(1,234)" is a pair, not 1234
        s = s.replace(",", "")
    s = re.sub(r"\s+", "", s)
    s = _DECIMAL.sub(lambda m: m.group(1) + ("." + m.group(2) if m.group(2) else ""), s)
    s = s.rstrip(".")
    return s if "\\" in s else s.lower()  # case matters in LaTeX (\Delta vs \delta)


_RISKY = re.compile(r"!|\^\s*\{[^{}]*\^|\^\s*\(?\s*\d{3,}|\*\*|\\uparrow")


def _safe_without_timeout(s: str) -> bool:
    return len(s) <= 120 and not _RISKY.search(s)


def math_equal(gold: str, pred: str, *, timeout_s: int | None = VERIFY_TIMEOUT_S) -> bool:
    """math-verify equivalence of two answer strings (LaTeX or plain); False on any failure."""
    if not (isinstance(gold, str) and isinstance(pred, str)) or not gold.strip() or not pred.strip():
        return False
    if len(gold) > MAX_VERIFY_CHARS or len(pred) > MAX_VERIFY_CHARS:
        return False
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main:
        if not (_safe_without_timeout(gold) and _safe_without_timeout(pred)):
            return False
        timeout_s = None
    try:
        from math_verify import parse, verify
        kw = {"parsing_timeout": timeout_s}
        g = parse(f"${gold}$", **kw)
        p = parse(f"${pred}$", **kw)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout_s))
    except BaseException as e:  # noqa: BLE001 - sympy/lark raise anything, timeouts included
        if isinstance(e, KeyboardInterrupt):
            raise
        return False


def answers_match(pred: str | None, gold) -> bool:
    """Equivalence of an already-extracted answer and the gold answer (strings, then math-verify)."""
    if pred is None or gold is None:
        return False
    gold = str(gold).strip()
    box = last_boxed(gold) if "\\boxed" in gold or "\\fbox" in gold else None
    if box:
        gold = box.strip()
    pred = pred.strip()
    ng, npred = normalize_answer(gold), normalize_answer(pred)
    if not ng or not npred:
        return False
    if ng == npred:
        return True
    # "x = 5" against a gold "5": compare the right-hand side too.
    if "=" not in ng and npred.count("=") == 1 and re.fullmatch(r"[a-z]\w*=.+", npred):
        if npred.split("=", 1)[1] == ng:
            return True
    return math_equal(gold, pred)


def grade(model_text, gold) -> bool:
    """True iff the final answer extracted from ``model_text`` is equivalent to ``gold``. Never raises."""
    try:
        return answers_match(extract_answer(model_text), gold)
    except Exception:  # noqa: BLE001 - grading garbage is "wrong", never a crash
        return False


def _grade_pairs(pairs: list[tuple[str, str]]) -> list[bool]:
    return [grade(t, g) for t, g in pairs]


def grade_many(model_texts: Sequence[str], golds: Sequence[str], *, workers: int = 1,
               chunk_size: int = 64) -> list[bool]:
    """``[grade(t, g) for t, g in zip(model_texts, golds)]``, optionally in ``workers`` processes.

    Worker processes are started with ``spawn`` (safe next to a running JAX runtime) and run math-verify
    in their main thread, so its time limits apply. Results are in input order.
    """
    if len(model_texts) != len(golds):
        raise ValueError(f"grade_many: {len(model_texts)} texts but {len(golds)} gold answers")
    pairs = list(zip(model_texts, golds))
    if workers <= 1 or len(pairs) <= chunk_size:
        return _grade_pairs(pairs)
    import multiprocessing as mp

    chunks = [pairs[i:i + chunk_size] for i in range(0, len(pairs), chunk_size)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        out: list[bool] = []
        for part in ex.map(_grade_pairs, chunks):
            out.extend(part)
    return out
