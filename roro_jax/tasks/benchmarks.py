"""JSONL loaders for the math benchmarks, one ``Problem`` type for all.

Each benchmark file names its fields differently (that is what real users' files look like); the
per-file mapping lives in ``SCHEMAS`` and a file whose name is not in it gets its schema inferred from
its first row. ``load_benchmark`` accepts a path or a shipped name::

    load_benchmark("math500")                       # the package-data copy
    load_benchmark("aime.train")                    # aime.train.jsonl
    load_benchmark("/data/my_set.jsonl")            # a user's file, same rules

Answer extraction per format:

- ``final_answer`` (OlympiadBench): a list of strings; several entries are joined with ", ".
- ``answer`` holding a worked solution with ``#### N`` (GSM8K): the text after the last ``####``.
- ``solution`` holding ``\\boxed{...}`` (Minerva): the content of the last box (nested braces kept).
- ``solution`` that is just the answer (AIME): used as is.
- numbers (AMC's ``27.0``): written without a trailing ``.0`` when integral.

Any malformed line (bad JSON, not an object, a missing or empty field, no extractable answer) raises
:class:`BenchmarkFormatError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roro_jax.jsonio import iter_jsonl
from roro_jax.paths import PACKAGE_DIR, shared_data_dir
from roro_jax.tasks.grading import last_boxed
from roro_jax.tasks.problem import Problem

PACKAGED_DIR = PACKAGE_DIR / "data" / "benchmarks"

# Shipped names -> file names (also accepted: the file name itself, or its stem).
BENCHMARK_FILES: dict[str, str] = {
    "math500": "math500.test.jsonl",
    "gsm8k": "gsm8k.test.jsonl",
    "aime24": "aime24.test.jsonl",
    "aime": "aime.test.jsonl",
    "aime.test": "aime.test.jsonl",
    "aime.train": "aime.train.jsonl",
    "amc23": "amc23.test.jsonl",
    "minerva_math": "minerva_math.test.jsonl",
    "minerva": "minerva_math.test.jsonl",
    "olympiadbench": "olympiadbench.test.jsonl",
}


class BenchmarkFormatError(ValueError):
    """A benchmark file or row that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Schema:
    """Which fields hold what. ``answer_kind``: how the gold answer is obtained from ``answer`` field.

    ``plain`` (the field is the answer), ``after_hashes`` (text after the last ``####``), ``boxed``
    (content of the last ``\\boxed{}``), ``list`` (a list of answers, joined), ``auto`` (decide per row:
    list -> join, ``####`` -> after it, ``\\boxed`` -> box content, else plain).
    """

    question: str
    answer: str
    id: str | None = None
    answer_kind: str = "auto"
    meta: tuple[str, ...] = ()
    solution: str | None = None


SCHEMAS: dict[str, Schema] = {
    "math500": Schema("problem", "answer", "unique_id", "plain", ("subject", "level"), "solution"),
    "gsm8k": Schema("question", "answer", "idx", "after_hashes", (), "answer"),
    "aime24": Schema("problem", "answer", "id", "plain", ("url",), "solution"),
    "aime": Schema("problem", "solution", "ID", "plain", ("Year", "Problem Number", "Part")),
    "amc23": Schema("problem", "answer", "id", "plain", ("url",)),
    "minerva_math": Schema("problem", "solution", "idx", "boxed", ("type",), "solution"),
    "olympiadbench": Schema("question", "final_answer", "id", "list",
                            ("answer_type", "unit", "subfield", "is_multiple_answer")),
}

_QUESTION_KEYS = ("problem", "question", "query", "Problem", "Question", "prompt")
_ANSWER_KEYS = ("final_answer", "answer", "gold", "target", "solution", "Answer")
_ID_KEYS = ("id", "unique_id", "ID", "idx", "uid")


def available_benchmarks() -> list[str]:
    """Names accepted by :func:`load_benchmark` without a path (shipped files that exist)."""
    return sorted(n for n, f in BENCHMARK_FILES.items() if (PACKAGED_DIR / f).exists())


def resolve_benchmark(path_or_name: str | Path) -> Path:
    """A shipped name (``math500``), a file name, or a path -> an existing file.

    Names are looked up in the package data first, then in ``shared_data_dir()/benchmarks``.
    """
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    name = str(path_or_name)
    candidates = []
    if name in BENCHMARK_FILES:
        candidates.append(BENCHMARK_FILES[name])
    if "/" not in name:
        candidates += [name, f"{name}.jsonl", f"{name}.test.jsonl"]
    for d in (PACKAGED_DIR, shared_data_dir() / "benchmarks"):
        for c in candidates:
            if (d / c).is_file():
                return d / c
    raise FileNotFoundError(f"no benchmark file or shipped benchmark named {name!r}; "
                            f"shipped: {available_benchmarks()}")


def source_name(path: Path) -> str:
    """``math500.test.jsonl`` -> ``math500``; ``aime.train.jsonl`` -> ``aime``; ``x.jsonl`` -> ``x``."""
    return path.name.split(".")[0]


def infer_schema(row: dict[str, Any]) -> Schema:
    q = next((k for k in _QUESTION_KEYS if k in row), None)
    a = next((k for k in _ANSWER_KEYS if k in row), None)
    if q is None or a is None:
        raise KeyError(f"cannot tell which fields hold the question and the answer (fields: "
                       f"{sorted(row)}; expected one of {_QUESTION_KEYS} and one of {_ANSWER_KEYS})")
    i = next((k for k in _ID_KEYS if k in row), None)
    return Schema(q, a, i, "auto")


def _answer_from(value: Any, kind: str, field_name: str) -> str:
    if isinstance(value, bool):
        raise ValueError(f"field {field_name!r} is a boolean, not an answer")
    if isinstance(value, (int, float)):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if kind == "list" and isinstance(value, str) and value.lstrip().startswith("["):
        try:  # some distributions store the list as its Python repr
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(value, list):
        if kind not in ("list", "auto"):
            raise ValueError(f"field {field_name!r} is a list, expected a string")
        if not value:
            raise ValueError(f"field {field_name!r} is an empty list")
        return ", ".join(_answer_from(v, "plain", field_name) for v in value)
    if not isinstance(value, str):
        raise ValueError(f"field {field_name!r} has type {type(value).__name__}, expected a string")
    if kind == "after_hashes" or (kind == "auto" and "####" in value):
        if "####" not in value:
            raise ValueError(f"field {field_name!r} has no '#### answer' line")
        ans = value.rsplit("####", 1)[1].strip()
        return ans.replace(",", "") if _NUMBER_WITH_COMMAS.fullmatch(ans) else ans
    if kind == "boxed" or (kind == "auto" and "\\boxed" in value):
        box = last_boxed(value)
        if box is None:
            raise ValueError(f"field {field_name!r} has no well-formed \\boxed{{...}}")
        return box.strip()
    return value.strip()


_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def parse_row(row: Any, schema: Schema, source: str, default_id: str) -> Problem:
    """One decoded JSON row -> Problem (raises KeyError/ValueError with a field-level message)."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a JSON {type(row).__name__}, expected an object")
    for key in (schema.question, schema.answer):
        if key not in row or row[key] is None:
            raise KeyError(f"missing field {key!r} (fields present: {sorted(row)})")
    question = row[schema.question]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"field {schema.question!r} must be a non-empty string")
    answer = _answer_from(row[schema.answer], schema.answer_kind, schema.answer)
    if not answer:
        raise ValueError(f"field {schema.answer!r} gives an empty answer")
    native = row.get(schema.id) if schema.id else None
    pid = f"{source}:{native if native is not None else default_id}"
    meta = {k: row[k] for k in schema.meta if k in row and row[k] is not None}
    solution = row.get(schema.solution) if schema.solution else None
    return Problem(pid, question.strip(), answer, source,
                   solution if isinstance(solution, str) else None, meta)


def load_benchmark(path_or_name: str | Path, *, limit: int | None = None,
                   source: str | None = None) -> list[Problem]:
    """Read a benchmark JSONL file (or a shipped one by name) into ``Problem``s, in file order.

    Args:
      path_or_name: a path, or a shipped name (see :func:`available_benchmarks`).
      limit: keep only the first ``limit`` problems (the whole file is still validated).
      source: override the source name (default: the file name up to its first dot).
    Raises:
      FileNotFoundError: no such file or name.
      BenchmarkFormatError: a malformed line, naming ``file:line``; an empty file; duplicate ids.
    """
    path = resolve_benchmark(path_or_name)
    src = source or source_name(path)
    schema = SCHEMAS.get(src)
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for lineno, row in iter_jsonl(path, error=BenchmarkFormatError):
        try:
            if schema is None:
                if not isinstance(row, dict):
                    raise ValueError(f"row is a JSON {type(row).__name__}, expected an object")
                schema = infer_schema(row)
            prob = parse_row(row, schema, src, default_id=str(len(problems)))
        except (KeyError, ValueError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise BenchmarkFormatError(f"{path}:{lineno}: {msg}") from None
        if prob.id in seen:
            raise BenchmarkFormatError(f"{path}:{lineno}: duplicate id {prob.id!r} "
                                       f"(first on line {seen[prob.id]})")
        seen[prob.id] = lineno
        problems.append(prob)
    if not problems:
        raise BenchmarkFormatError(f"{path}: no problems (empty file)")
    return problems[:limit] if limit is not None else problems
