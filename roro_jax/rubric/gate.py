"""The statistical validation gate and per-criterion checks.

**Gate.** After a phase, both the previous and the updated system order the same held-out pairs; a pair
is *correct* when the preferred trajectory scores strictly higher (a tie is wrong). Discordant pairs:
``b`` = right only under the update, ``c`` = right only before it. Under H0 (no difference) ``b ~
Binomial(b + c, 1/2)``; the one-sided exact McNemar test is ``p = P(X ≥ b)``
(``scipy.stats.binomtest(b, b + c, 0.5, alternative="greater")``). The update is kept iff ``p < alpha``
(no discordant pair: p = 1, rejected). :func:`gated_phase` snapshots the state, runs the phase, tests,
and on rejection returns the snapshot (bit-identical to the state before the phase).

**Criterion checks.** For each criterion (pooled by normalised text across queries), on a set of pairs:
``acc`` = share of pairs where the criterion's probability is higher for the preferred trajectory (ties
1/2), ``std`` = standard deviation of its probability over the trajectories. A criterion is pruned when
it has at least ``min_pairs`` pairs and either ``std < min_std`` (constant) or ``acc <= min_acc`` (does not
go with preference).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from scipy.stats import binomtest


@dataclass
class GateConfig:
    alpha: float = 0.05
    enabled: bool = True  # False: every update is kept (the decision is still tested and logged)
    prune: bool = True
    min_pairs: int = 20
    min_std: float = 0.02
    min_acc: float = 0.5


@dataclass(frozen=True)
class GateDecision:
    accept: bool
    acc_old: float
    acc_new: float
    n: int
    b: int  # discordant pairs won by the update
    c: int  # discordant pairs lost by the update
    statistic: int  # = b
    p_value: float
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_gate(old_correct, new_correct, alpha: float = 0.05) -> GateDecision:
    """One-sided exact McNemar test of "the update orders more held-out pairs right" (module docstring)."""
    old = np.asarray(old_correct, bool).reshape(-1)
    new = np.asarray(new_correct, bool).reshape(-1)
    if old.shape != new.shape:
        raise ValueError(f"old and new correctness have different shapes {old.shape} vs {new.shape}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    b = int(np.sum(new & ~old))
    c = int(np.sum(old & ~new))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
    n = int(old.size)
    return GateDecision(accept=bool(p < alpha), acc_old=float(old.mean()) if n else math.nan,
                        acc_new=float(new.mean()) if n else math.nan, n=n, b=b, c=c, statistic=b, p_value=p,
                        alpha=float(alpha))


def gated_phase(snapshot: Callable[[], Any], restore: Callable[[Any], None], run: Callable[[], Any],
                evaluate: Callable[[], np.ndarray], *, alpha: float = 0.05, enabled: bool = True,
                old_correct: np.ndarray | None = None) -> tuple[GateDecision, Any, np.ndarray]:
    """Snapshot → evaluate → run the phase → evaluate → test → keep or restore.

    ``evaluate()`` returns the held-out per-pair correctness of the *current* state; ``old_correct`` skips
    the first evaluation when the caller already has it. Returns ``(decision, run's return value, the
    held-out correctness of the state now in place)``; when the update is rejected (and the gate is
    ``enabled``) the snapshot has been restored.
    """
    snap = snapshot()
    old = evaluate() if old_correct is None else np.asarray(old_correct, bool)
    out = run()
    new = evaluate()
    d = mcnemar_gate(old, new, alpha)
    if enabled and not d.accept:
        restore(snap)
        return d, out, old
    return d, out, new


class GateLog:
    """Append-only JSONL log of gate decisions (one object per decision, flushed and fsync'd)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self.records: list[dict[str, Any]] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> dict[str, Any]:
        record = {"time": time.time(), **record}
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=_jsonable) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return record


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def criterion_stats(records: Iterable[tuple[str, float, float]], values: Iterable[tuple[str, float]]
                    ) -> dict[str, dict[str, float]]:
    """Per criterion key: ``acc`` over ``(key, p_pref, p_rej)`` pair records, ``std`` over ``(key, p)`` values."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for k, a, b in records:
        pairs.setdefault(k, []).append((a, b))
    vals: dict[str, list[float]] = {}
    for k, v in values:
        vals.setdefault(k, []).append(v)
    out = {}
    for k in sorted(set(pairs) | set(vals)):
        pr = np.array(pairs.get(k, []), float).reshape(-1, 2)
        acc = float(np.mean((pr[:, 0] > pr[:, 1]) + 0.5 * (pr[:, 0] == pr[:, 1]))) if len(pr) else math.nan
        v = np.array(vals.get(k, []), float)
        out[k] = {"n_pairs": int(len(pr)), "acc": acc, "std": float(v.std()) if v.size else math.nan}
    return out


def criteria_to_prune(stats: dict[str, dict[str, float]], cfg: GateConfig) -> dict[str, str]:
    """``{criterion key: reason}`` of the criteria to prune (module docstring)."""
    out = {}
    for k, s in stats.items():
        if s["n_pairs"] < cfg.min_pairs:
            continue
        if not s["std"] >= cfg.min_std:
            out[k] = f"constant (std {s['std']:.3g} < {cfg.min_std})"
        elif not s["acc"] > cfg.min_acc:
            out[k] = f"does not go with preference (acc {s['acc']:.3f} <= {cfg.min_acc})"
    return out
