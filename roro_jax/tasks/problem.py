"""The one problem record every task produces (benchmark files and the toy generator alike)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """A query with a gold final answer.

    Attributes:
      id: unique within its source (benchmark problems: ``"<source>:<native id>"``).
      question: the text shown to the model.
      answer: the gold final answer as a string (LaTeX for MATH-style sets, digits for GSM8K/toy).
      source: the benchmark name (``"math500"``, ``"gsm8k"``, ..., ``"toy"``) or the file stem.
      solution: a reference solution where the source has one (toy: one operation per step), else None.
      meta: extra per-source fields (subject, level, year, ...); never needed for grading.
    """

    id: str
    question: str
    answer: str
    source: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Problem":
        return cls(**d)
