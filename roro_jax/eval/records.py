"""Per-point evaluation records: what the eval pipeline writes and the report reads.

One :class:`CurvePoint` is one operating point of one method on one test set: a policy at one value of
its sweep parameter (threshold, escalation rate, λ_c, ...), or a single point (SRM-only, LRM-only,
a trained router).  Records are stored one per line in a JSONL file (:func:`write_points` /
:func:`read_points`); the report and the plot need nothing else.

Record fields (JSON)
--------------------
=================  ==========================================================================================
``method``         method name, e.g. ``"random"``, ``"trim_thr"``, ``"roro"``; the points of one method form
                   its curve
``param``          sweep parameter value (number or string), ``null`` for a single point
``param_name``     what ``param`` is (``"threshold"``, ``"rate"``, ``"lambda_c"``, ...), ``""`` if none
``role``           ``"srm"`` (the SRM-only endpoint), ``"lrm"`` (the LRM-only endpoint) or ``"method"``;
                   a report needs exactly one ``srm`` and one ``lrm`` record, which define PGR and are
                   placed at share 0 and 1 by definition (whatever their ``large_share``)
``accuracy``       mean correctness over the problems, in [0, 1]
``large_share``    large-model token share, in [0, 1]: ``sum(large_tokens) / sum(total_tokens)`` over
                   the problems (a ratio of sums, like TRIM's ``target_token_frac``)
``flops``          mean FLOPs per problem (2·N_params per generated token), ``null`` if unknown
``n``              number of problems
``is_estimate``    true when outcomes are estimated rather than graded (replay world); reported as such
``estimate_note``  how the outcome was estimated (shown in the report), ``""`` if graded
``problem_ids``    per-problem ids, ``null`` if absent (then per-problem arrays align by position)
``correct``        per-problem correctness in [0, 1] (0/1, or the mean over several samples), ``null`` if
                   absent
``large_tokens``   per-problem large-model tokens, ``null`` if absent
``total_tokens``   per-problem denominator tokens of the share (the tokens of the routed solutions;
                   :func:`point_from_trajectories` uses the kept tokens, like ``Trajectory.large_share``)
``meta``           free-form JSON object
=================  ==========================================================================================

The per-problem arrays are optional; when all three are present (and the SRM/LRM records have them too)
the report adds bootstrap confidence intervals over problems.  When present, ``accuracy``,
``large_share`` and ``n`` must agree with them (checked on construction).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from roro_jax.jsonio import atomic_write_jsonl, iter_jsonl
from roro_jax.types import InputError

ROLES = ("srm", "lrm", "method")
_ARRAYS = ("correct", "large_tokens", "total_tokens")


@dataclass
class CurvePoint:
    """One operating point of one method (see the module docstring for the fields)."""

    method: str
    accuracy: float
    large_share: float
    n: int
    param: float | str | None = None
    param_name: str = ""
    role: str = "method"
    flops: float | None = None
    is_estimate: bool = False
    estimate_note: str = ""
    problem_ids: list[str] | None = None
    correct: list[float] | None = None
    large_tokens: list[float] | None = None
    total_tokens: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field if the record is inconsistent."""
        where = f"point {self.label!r}"
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"{where}: 'method' must be a non-empty string")
        if self.role not in ROLES:
            raise ValueError(f"{where}: 'role' must be one of {ROLES}, got {self.role!r}")
        for name in ("accuracy", "large_share"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{where}: '{name}' must be a finite number, got {v!r}")
        if not 0.0 <= self.large_share <= 1.0:
            raise ValueError(f"{where}: 'large_share' must lie in [0, 1], got {self.large_share}")
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n <= 0:
            raise ValueError(f"{where}: 'n' must be a positive integer, got {self.n!r}")
        if self.flops is not None and (not isinstance(self.flops, (int, float)) or not math.isfinite(self.flops)
                                       or self.flops < 0):
            raise ValueError(f"{where}: 'flops' must be a non-negative number or null, got {self.flops!r}")
        present = [getattr(self, k) is not None for k in _ARRAYS]
        if any(present) and not all(present):
            missing = [k for k, p in zip(_ARRAYS, present) if not p]
            raise ValueError(f"{where}: per-problem arrays come together; missing {missing}")
        if self.problem_ids is not None:
            if len(self.problem_ids) != self.n:
                raise ValueError(f"{where}: {len(self.problem_ids)} problem_ids but n={self.n}")
            if len(set(self.problem_ids)) != self.n:
                raise ValueError(f"{where}: duplicate problem_ids")
        if all(present):
            arrs = {k: np.asarray(getattr(self, k), np.float64) for k in _ARRAYS}
            for k, a in arrs.items():
                if a.shape != (self.n,):
                    raise ValueError(f"{where}: '{k}' has shape {a.shape}, expected ({self.n},)")
                if not np.all(np.isfinite(a)) or np.any(a < 0):
                    raise ValueError(f"{where}: '{k}' must be finite and non-negative")
            if np.any(arrs["correct"] > 1):
                raise ValueError(f"{where}: 'correct' values must lie in [0, 1]")
            if np.any(arrs["large_tokens"] > arrs["total_tokens"]):
                raise ValueError(f"{where}: 'large_tokens' exceeds 'total_tokens' for some problem")
            acc = float(arrs["correct"].mean())
            tot = float(arrs["total_tokens"].sum())
            share = float(arrs["large_tokens"].sum() / tot) if tot > 0 else 0.0
            if abs(acc - self.accuracy) > 1e-9:
                raise ValueError(f"{where}: 'accuracy' {self.accuracy} != mean of 'correct' {acc}")
            if abs(share - self.large_share) > 1e-9:
                raise ValueError(f"{where}: 'large_share' {self.large_share} != sum(large_tokens)/"
                                 f"sum(total_tokens) {share}")

    # ------------------------------------------------------------------------------------ properties
    @property
    def label(self) -> str:
        if self.param is None:
            return str(self.method)
        return f"{self.method}[{self.param_name + '=' if self.param_name else ''}{self.param}]"

    @property
    def has_arrays(self) -> bool:
        return self.correct is not None

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def from_arrays(cls, method: str, correct: Sequence[float], large_tokens: Sequence[float],
                    total_tokens: Sequence[float], *, problem_ids: Sequence[str] | None = None,
                    **kw: Any) -> "CurvePoint":
        """Build a record from per-problem arrays, computing ``accuracy``, ``large_share`` and ``n``."""
        c = np.asarray(correct, np.float64)
        lt = np.asarray(large_tokens, np.float64)
        tt = np.asarray(total_tokens, np.float64)
        if c.ndim != 1 or c.size == 0:
            raise ValueError(f"point {method!r}: 'correct' must be a non-empty 1-D array")
        tot = float(tt.sum())
        return cls(method=method, accuracy=float(c.mean()),
                   large_share=float(lt.sum() / tot) if tot > 0 else 0.0, n=int(c.size),
                   problem_ids=None if problem_ids is None else [str(p) for p in problem_ids],
                   correct=c.tolist(), large_tokens=lt.tolist(), total_tokens=tt.tolist(), **kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CurvePoint":
        if not isinstance(d, dict):
            raise ValueError(f"a point record must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} in point record")
        missing = sorted({"method", "accuracy", "large_share", "n"} - set(d))
        if missing:
            raise ValueError(f"point record misses field(s) {missing}")
        return cls(**d)


# -------------------------------------------------------------------------------------------------- IO

def write_points(path: str | os.PathLike, points: Iterable[CurvePoint]) -> Path:
    """Write records as JSONL (atomically: a temporary file renamed into place). Returns the path."""
    return atomic_write_jsonl(path, (p.to_dict() for p in points), separators=(",", ":"), allow_nan=False)


def read_points(path: str | os.PathLike) -> list[CurvePoint]:
    """Read records written by :func:`write_points`; errors (:class:`~roro_jax.types.InputError`, a
    ``ValueError``) name the file and line. A file with no record is an error too."""
    out = []
    for lineno, row in iter_jsonl(path):
        try:
            out.append(CurvePoint.from_dict(row))
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}:{lineno}: {e}") from None
    if not out:
        raise InputError(f"{path}: no point records (empty file)")
    return out


def group_by_method(points: Iterable[CurvePoint]) -> "OrderedDict[str, list[CurvePoint]]":
    """Method → its ``role == "method"`` points, methods in first-appearance order.

    A method's points are sorted by ``param`` when every param is a number, else kept in input order.
    """
    groups: OrderedDict[str, list[CurvePoint]] = OrderedDict()
    for p in points:
        if p.role == "method":
            groups.setdefault(p.method, []).append(p)
    for k, g in groups.items():
        if all(isinstance(p.param, (int, float)) and not isinstance(p.param, bool) for p in g):
            g.sort(key=lambda p: p.param)
    return groups


def endpoints(points: Iterable[CurvePoint]) -> tuple[CurvePoint, CurvePoint]:
    """The unique SRM-only and LRM-only records; ``ValueError`` if either is missing or repeated."""
    pts = list(points)
    found = {}
    for role in ("srm", "lrm"):
        sel = [p for p in pts if p.role == role]
        if len(sel) != 1:
            raise ValueError(f"need exactly one record with role={role!r}, found {len(sel)}"
                             + (f": {[p.label for p in sel]}" if sel else ""))
        found[role] = sel[0]
    if found["srm"].accuracy == found["lrm"].accuracy:
        raise ValueError(f"SRM-only and LRM-only accuracies are equal ({found['srm'].accuracy}): "
                         "PGR-based metrics are undefined")
    return found["srm"], found["lrm"]


# ---------------------------------------------------------------------------------------- constructors

def _kept_tokens(traj) -> int:
    # Same denominator as ``Trajectory.large_share``: the kept step's tokens (its token ids if recorded,
    # else the writing model's token count).
    return int(sum(s.n_tokens if s.token_ids else (s.large_tokens if s.action else s.small_tokens)
                   for s in traj.steps))


def point_from_trajectories(method: str, trajectories: Sequence[Any], *, param: float | str | None = None,
                            param_name: str = "", role: str = "method",
                            small_params: float | None = None, large_params: float | None = None,
                            estimate_note: str = "", meta: dict[str, Any] | None = None) -> CurvePoint:
    """One record from a policy's trajectories on a test set (``roro_jax.types.Trajectory`` objects).

    Trajectories are grouped by ``query_id`` (several samples per query are averaged: per-problem
    correctness is the share of correct samples, tokens are summed).  A trajectory whose ``correct`` is
    None is an error (an ungraded test result cannot be scored).  ``flops`` is the mean per problem when
    both parameter counts are given.  ``is_estimate`` is set when any trajectory's outcome is estimated.
    """
    if not trajectories:
        raise ValueError(f"point {method!r}: no trajectories")
    by_q: OrderedDict[str, list] = OrderedDict()
    for t in trajectories:
        if t.correct is None:
            raise ValueError(f"point {method!r}: trajectory {t.traj_id} is ungraded (correct is None)")
        by_q.setdefault(str(t.query_id), []).append(t)
    ids = list(by_q)
    correct = [float(np.mean([bool(t.correct) for t in ts])) for ts in by_q.values()]
    large = [float(sum(t.large_tokens for t in ts)) for ts in by_q.values()]
    total = [float(sum(_kept_tokens(t) for t in ts)) for ts in by_q.values()]
    flops = None
    if small_params is not None and large_params is not None:
        flops = float(np.mean([np.mean([t.flops(small_params, large_params) for t in ts])
                               for ts in by_q.values()]))
    is_est = any(bool(getattr(t, "correct_is_estimate", False)) for t in trajectories)
    return CurvePoint.from_arrays(method, correct, large, total, problem_ids=ids, param=param,
                                  param_name=param_name, role=role, flops=flops, is_estimate=is_est,
                                  estimate_note=estimate_note if is_est else "", meta=dict(meta or {}))


def load_reference_curve(path: str | os.PathLike, method: str, *, param_field: str | None = None,
                         endpoint_names: tuple[str, str] = ("draft-only", "target-only")) -> list[CurvePoint]:
    """Records from a measured curve in the TRIM release format (``accuracy``, ``target_token_frac``, ...).

    Rows with ``target_token_frac`` exactly 0 or 1 become the ``srm``/``lrm`` endpoint records (named by
    ``endpoint_names``); the others are points of ``method``.  ``param`` is ``param_field``'s value when
    given (e.g. ``"threshold"``), else the row's remaining scalar settings joined as ``k=v`` text.  ``n`` is
    ``num_correct / accuracy`` rounded when both are present, else 1.  No per-problem arrays (no CIs).
    """
    skip = {"accuracy", "num_correct", "target_token_frac", "draft_token_frac"}
    out = []
    for lineno, row in iter_jsonl(path, error=ValueError):
        try:
            acc, share = float(row["accuracy"]), float(row["target_token_frac"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{lineno}: needs numeric 'accuracy' and 'target_token_frac' ({e!r})") \
                from None
        n = int(round(row["num_correct"] / acc)) if row.get("num_correct") and acc > 0 else 1
        if param_field is not None:
            if param_field not in row:
                raise ValueError(f"{path}:{lineno}: no field {param_field!r}")
            param, pname = row[param_field], param_field
        else:
            settings = {k: v for k, v in row.items()
                        if k not in skip and not k.startswith("avg_") and isinstance(v, (int, float))}
            param, pname = ",".join(f"{k}={v}" for k, v in settings.items()) or None, ""
        role = "srm" if share == 0.0 else "lrm" if share == 1.0 else "method"
        name = endpoint_names[0] if role == "srm" else endpoint_names[1] if role == "lrm" else method
        try:
            out.append(CurvePoint(method=name, accuracy=acc, large_share=share, n=n,
                                  param=None if role != "method" else param,
                                  param_name="" if role != "method" else pname, role=role,
                                  meta={"source": str(path), "line": lineno}))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    return out
