"""Preference pairs from exploratory routing trajectories (RoRo stage 1, DESIGN.md §1).

For each query, every two trajectories of that query are compared once and give at most one pair:

* **outcome** — one is correct and the other wrong: the correct one is preferred (margin 1).
* **cost** — same outcome, and the cheaper one is cheaper by at least ``cost_margin`` relative to the
  dearer one: the cheaper one is preferred (margin = relative cost difference).
* **process** — same outcome and similar cost (relative difference ≤ ``similar_cost``), and process
  scores that differ by more than ``tie_margin``: the higher-scoring one is preferred (margin = score
  difference).  ``process_label`` names the score (registry :data:`PROCESS_LABELS`): ``quality``
  (:func:`process_quality`: where the escalations landed, waste, switches; the default) or ``checkpoints``
  (the oracle checkpoint score: the share of the toy problem's reference steps the route keeps,
  :func:`roro_jax.rubric.teacher.checkpoint_scores`; needs the query texts and toy problems).

With ``balance_outcome="cost"``, each query keeps as many outcome pairs whose preferred trajectory is the
dearer one as pairs whose preferred trajectory is the cheaper one (the larger side is subsampled; equal-cost
pairs are all kept), so "more large-model tokens" no longer predicts the preferred side of an outcome pair:
a Judge trained on them cannot learn an escalation bonus from outcome pairs alone.

Pairs of the same outcome whose cost difference is neither clear (≥ ``cost_margin``) nor small
(≤ ``similar_cost``), and process candidates within the tie margin, are dropped as ties.  Trajectories
whose ``correct`` is None are never in outcome pairs; by default they are left out entirely
(``pair_ungraded`` lets two ungraded trajectories form cost/process pairs).  Optional caps per query and
per kind subsample with a generator seeded by ``(seed, query_id)``, so a query's pairs do not depend on
which other queries are present or on input order.  Every pair records its kind, margin, both trajectory
ids and a human-readable reason.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .registry import Registry
from .store import read_trajectory_file
from .jsonio import atomic_write_json, atomic_write_jsonl, iter_jsonl
from .types import ESCALATE, InputError, PreferencePair, Trajectory

KINDS = ("outcome", "cost", "process")
COST_MEASURES = ("large_tokens", "large_share")
OUTCOME_BALANCE = ("none", "cost")


class NoPairsWarning(UserWarning):
    """A trajectory file gave no preference pair at all."""


@dataclass(frozen=True)
class ProcessLabel:
    """What orders the two routes of a process pair (same outcome, similar cost).

    ``score``: a route -> its process score (higher is preferred; NaN: the route forms no process pair);
    pure. ``explain``: (preferred, its score, rejected, its score) -> the pair's reason after the outcome and
    cost part."""

    score: Callable[[Trajectory], float]
    explain: Callable[[Trajectory, float, Trajectory, float], str]


# pairs.process_label -> (PairsConfig, query texts by id or None) -> ProcessLabel
PROCESS_LABELS: Registry[Callable[..., ProcessLabel]] = Registry("process label")


def _process_labels() -> Registry:
    return PROCESS_LABELS


@dataclass(frozen=True)
class PairsConfig:
    """How pairs are built (see the module docstring).

    ``cost_measure``: ``"large_tokens"`` (LRM tokens generated, the trajectory cost of DESIGN.md §1) or
    ``"large_share"``.  ``cost_margin``: least relative cost difference ``(c_hi − c_lo)/c_hi`` of a cost
    pair.  ``similar_cost``: largest relative cost difference of a process pair (must be below
    ``cost_margin``, so no two trajectories form both).  ``tie_margin``: process-quality differences up to
    this are ties.  ``process_weights``: weights of the (critical, waste, switch) terms of
    :func:`process_quality`.  ``max_per_kind`` / ``max_per_query``: caps per query (None = no cap).
    ``balance_outcome``: ``"none"`` or ``"cost"`` (per query, as many outcome pairs preferring the dearer
    route as preferring the cheaper one; see the module docstring).  ``process_label``: what orders a
    process pair, a name in :data:`PROCESS_LABELS` (``quality`` | ``checkpoints``).
    """

    outcome: bool = True
    cost: bool = True
    process: bool = True
    cost_measure: str = "large_tokens"
    cost_margin: float = 0.25
    similar_cost: float = 0.10
    tie_margin: float = 0.05
    process_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)
    pair_ungraded: bool = False
    max_per_kind: int | None = None
    max_per_query: int | None = None
    balance_outcome: str = "none"
    process_label: str = field(default="quality", metadata={"registry": _process_labels})

    def __post_init__(self) -> None:
        if self.balance_outcome not in OUTCOME_BALANCE:
            raise ValueError(f"PairsConfig.balance_outcome must be one of {OUTCOME_BALANCE}, "
                             f"got {self.balance_outcome!r}")
        if self.cost_measure not in COST_MEASURES:
            raise ValueError(f"PairsConfig.cost_measure must be one of {COST_MEASURES}, got {self.cost_measure!r}")
        if not 0.0 < self.cost_margin <= 1.0:
            raise ValueError(f"PairsConfig.cost_margin must lie in (0, 1], got {self.cost_margin!r}")
        if not 0.0 <= self.similar_cost < self.cost_margin:
            raise ValueError(f"PairsConfig.similar_cost must lie in [0, cost_margin={self.cost_margin}), "
                             f"got {self.similar_cost!r}")
        if not self.tie_margin >= 0.0:
            raise ValueError(f"PairsConfig.tie_margin must be >= 0, got {self.tie_margin!r}")
        w = tuple(float(x) for x in self.process_weights)
        if len(w) != 3 or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise ValueError("PairsConfig.process_weights must be three non-negative numbers with a positive "
                             f"sum (critical, waste, switch), got {self.process_weights!r}")
        object.__setattr__(self, "process_weights", w)
        for name in ("max_per_kind", "max_per_query"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"PairsConfig.{name} must be a positive integer or None, got {v!r}")


# ---------------------------------------------------------------------------------- process quality

def _critical_steps(traj: Trajectory) -> tuple[set[int] | None, str]:
    """Critical step indices (within the trajectory) and where they come from; None if unknown."""
    n = len(traj.steps)
    meta = traj.meta or {}
    if "wrong_steps" in meta and meta["wrong_steps"] is not None:
        ks = {int(i) for i in meta["wrong_steps"]}
        src = "wrong_steps"
    elif "first_wrong_step" in meta:
        f = meta["first_wrong_step"]
        ks = set() if f is None else {int(f)}
        src = "first_wrong_step"
    else:
        conf = [(s.confidence, t) for t, s in enumerate(traj.steps) if s.confidence is not None]
        if not conf:
            return None, "none"
        lo = min(c for c, _ in conf)
        return {t for c, t in conf if c == lo}, "least_confident"
    if any(i < 0 for i in ks):
        raise ValueError(f"trajectory {traj.traj_id}: negative step index in meta[{src!r}]")
    return {i for i in ks if i < n}, src


def _confidence_ranks(traj: Trajectory) -> dict[int, float]:
    """Step index → confidence percentile rank in [0, 1] among steps with a confidence (0 = least)."""
    conf = [(t, float(s.confidence)) for t, s in enumerate(traj.steps) if s.confidence is not None]
    m = len(conf)
    if m < 2:
        return {}
    vals = np.array([c for _, c in conf])
    below = (vals[None, :] < vals[:, None]).sum(axis=1)
    equal = (vals[None, :] == vals[:, None]).sum(axis=1) - 1
    ranks = (below + 0.5 * equal) / (m - 1)
    return {t: float(r) for (t, _), r in zip(conf, ranks)}


def process_terms(traj: Trajectory) -> dict[str, Any]:
    """The three ingredients of :func:`process_quality` (None where a term is not defined).

    * ``critical``: share of the critical steps that were escalated.  Critical steps are, in order of
      preference, ``meta["wrong_steps"]`` (indices of steps where the small model went wrong),
      ``{meta["first_wrong_step"]}`` (None there means "the small model never went wrong": no critical
      step), else the least-confident step(s) by per-step ``confidence``.  Indices past the last step are
      ignored.  None when there is no critical step or nothing to find them from.
    * ``waste``: mean confidence percentile rank (0 = least confident step of the trajectory, 1 = most
      confident) of the escalated steps: escalating confident steps is wasteful.  0 when nothing with a
      confidence was escalated; None when fewer than two steps have a confidence.
    * ``switch``: number of changes of action between consecutive steps over the most possible
      (``n_steps − 1``); 0 for fewer than two steps.

    Also returns ``n_escalations``, ``n_switches`` and ``critical_source``.
    """
    esc = {t for t, s in enumerate(traj.steps) if s.action == ESCALATE}
    crit_set, src = _critical_steps(traj)
    critical = None if not crit_set else len(esc & crit_set) / len(crit_set)
    ranks = _confidence_ranks(traj)
    if not ranks:
        waste = None
    else:
        er = [ranks[t] for t in esc if t in ranks]
        waste = float(np.mean(er)) if er else 0.0
    acts = [s.action for s in traj.steps]
    n_sw = sum(a != b for a, b in zip(acts, acts[1:]))
    switch = n_sw / (len(acts) - 1) if len(acts) > 1 else 0.0
    return {"critical": critical, "waste": waste, "switch": switch, "n_escalations": len(esc),
            "n_switches": n_sw, "critical_source": src}


def process_quality(traj: Trajectory, weights: Sequence[float] = (0.5, 0.3, 0.2)) -> float:
    """Process-quality score of a routed trajectory, in [0, 1] (higher is better); pure.

    ``Q = (w_c·critical + w_w·(1 − waste) + w_s·(1 − switch)) / (sum of the weights of the defined terms)``
    with the terms of :func:`process_terms`: escalations that land on the critical steps (where the small
    model went wrong, or was least confident) score high, escalations of confident steps and frequent
    switching between models score low.  Undefined terms are left out and the weights renormalised; NaN
    if every defined term has weight 0.  Outcome and cost are deliberately not part of it.
    """
    w = [float(x) for x in weights]
    if len(w) != 3 or any(x < 0 for x in w):
        raise ValueError(f"process_quality: weights must be three non-negative numbers, got {weights!r}")
    t = process_terms(traj)
    vals = [t["critical"], None if t["waste"] is None else 1.0 - t["waste"], 1.0 - t["switch"]]
    num = sum(wi * v for wi, v in zip(w, vals) if v is not None)
    den = sum(wi for wi, v in zip(w, vals) if v is not None)
    return float(num / den) if den > 0 else float("nan")


# ------------------------------------------------------------------------------------ process labels

def _fmt_term(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def quality_label(weights: Sequence[float] = (0.5, 0.3, 0.2)) -> ProcessLabel:
    """Process pairs ordered by :func:`process_quality` with ``weights``."""
    def explain(hi_t: Trajectory, hi_q: float, lo_t: Trajectory, lo_q: float) -> str:
        th, tl = process_terms(hi_t), process_terms(lo_t)
        f = _fmt_term
        return (f"quality {hi_q:.3f} vs {lo_q:.3f} (critical steps escalated "
                f"{f(th['critical'])} vs {f(tl['critical'])} [{th['critical_source']}], "
                f"confidence rank of escalations {f(th['waste'])} vs {f(tl['waste'])}, "
                f"switches {th['n_switches']} vs {tl['n_switches']})")

    return ProcessLabel(score=lambda t: process_quality(t, weights), explain=explain)


def checkpoints_label(queries: Mapping[str, str] | None) -> ProcessLabel:
    """Process pairs ordered by the oracle checkpoint score (the share of the toy problem's reference steps a
    route keeps, :func:`roro_jax.rubric.teacher.checkpoint_scores`). Without the query texts, or for a query
    that is not a toy problem, an :class:`~roro_jax.types.InputError` naming ``pairs.process_label``."""
    from roro_jax.rubric.teacher import checkpoint_scores  # the checker's reference steps (toy problems)

    key = "config key 'pairs.process_label': 'checkpoints' scores a route by the reference steps of its toy problem"
    if queries is None:
        raise InputError(f"{key}, which needs the query texts (roro pairs --queries FILE); none were given")
    qs = dict(queries)

    def score(t: Trajectory) -> float:
        if t.query_id not in qs:
            raise InputError(f"{key}; no text for query {t.query_id!r}")
        try:
            return float(checkpoint_scores([t], qs)[0])
        except ValueError as e:  # not a toy problem: this world has no checker of steps
            raise InputError(f"{key}; {e} (use pairs.process_label=quality)") from None

    def explain(hi_t: Trajectory, hi_q: float, lo_t: Trajectory, lo_q: float) -> str:
        return f"checkpoints passed {hi_q:.3f} vs {lo_q:.3f} (share of the reference steps kept)"

    return ProcessLabel(score=score, explain=explain)


PROCESS_LABELS.add("quality", lambda cfg, queries: quality_label(cfg.process_weights))
PROCESS_LABELS.add("checkpoints", lambda cfg, queries: checkpoints_label(queries))


def process_label(cfg: "PairsConfig", queries: Mapping[str, str] | None = None) -> ProcessLabel:
    """The :class:`ProcessLabel` that ``cfg.process_label`` names."""
    return PROCESS_LABELS.get(cfg.process_label)(cfg, queries)


# ------------------------------------------------------------------------------------------- building

def _cost(traj: Trajectory, measure: str) -> float:
    return float(traj.large_tokens if measure == "large_tokens" else traj.large_share)


def _rel_diff(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return 0.0 if hi <= 0 else (hi - lo) / hi


def _query_rng(seed: int, query_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(query_id).encode())])


def _subsample(items: list, k: int | None, rng: np.random.Generator) -> tuple[list, int]:
    if k is None or len(items) <= k:
        return items, 0
    keep = np.sort(rng.choice(len(items), size=k, replace=False))
    return [items[i] for i in keep], len(items) - k


def _fmt_cost(x: float, measure: str) -> str:
    return f"{x:g}" if measure == "large_tokens" else f"{x:.3f}"


def _outcome_word(t: Trajectory) -> str:
    word = "ungraded" if t.correct is None else ("correct" if t.correct else "wrong")
    return word + (" (estimated)" if t.correct is not None and t.correct_is_estimate else "")


def _empty_stats() -> dict[str, Any]:
    stats: dict[str, Any] = {k: {"candidates": 0, "dropped_tie": 0, "dropped_cap": 0} for k in KINDS}
    stats["outcome"]["dropped_balance"] = 0
    return stats


def _balance_by_cost(pairs: list[PreferencePair], cost: dict[str, float], rng: np.random.Generator
                     ) -> tuple[list[PreferencePair], int]:
    """Keep equally many pairs whose preferred side is dearer and cheaper (and every equal-cost pair)."""
    up = [p for p in pairs if cost[p.preferred] > cost[p.rejected]]
    down = [p for p in pairs if cost[p.preferred] < cost[p.rejected]]
    k = min(len(up), len(down))
    up, d_up = _subsample(up, k, rng)
    down, d_down = _subsample(down, k, rng)
    keep = {id(p) for p in up + down}
    return [p for p in pairs if id(p) in keep or cost[p.preferred] == cost[p.rejected]], d_up + d_down


def build_pairs_with_stats(trajectories: Iterable[Trajectory], cfg: PairsConfig | None = None,
                           seed: int = 0, queries: Mapping[str, str] | None = None,
                           label: ProcessLabel | None = None) -> tuple[list[PreferencePair], dict[str, Any]]:
    """:func:`build_pairs` plus statistics of the construction.

    ``label`` orders the process pairs; None: the one ``cfg.process_label`` names (:func:`process_label`,
    which reads ``queries``, query id -> text, where the label needs them).

    Stats: per kind ``candidates`` (pairs that met the kind's condition before tie and cap checks),
    ``dropped_tie`` (process: quality difference ≤ ``tie_margin``; cost: same outcome with a relative cost
    difference strictly between ``similar_cost`` and ``cost_margin``, so neither a cost nor a process
    pair), ``dropped_cap`` (removed by ``max_per_kind``), and the :func:`pair_summary` fields of the kept pairs (``count``,
    ``queries``, ``margin_mean``/``margin_min``/``margin_max``); plus ``trajectories``, ``queries``,
    ``excluded_ungraded``, ``dropped_cap_query`` (pairs removed by ``max_per_query``).
    """
    cfg = cfg or PairsConfig()
    label = label or process_label(cfg, queries)
    by_q: OrderedDict[str, list[Trajectory]] = OrderedDict()
    seen: set[str] = set()
    n_traj = n_ungraded = 0
    for t in trajectories:
        if not isinstance(t, Trajectory):
            raise TypeError(f"build_pairs: expected Trajectory objects, got {type(t).__name__}")
        if t.traj_id in seen:
            raise ValueError(f"build_pairs: duplicate trajectory id {t.traj_id!r}")
        seen.add(t.traj_id)
        n_traj += 1
        if t.correct is None:
            n_ungraded += 1
            if not cfg.pair_ungraded:
                continue
        by_q.setdefault(str(t.query_id), []).append(t)

    stats = _empty_stats()
    cap_query = 0
    out: list[PreferencePair] = []
    for qid in sorted(by_q):
        trajs = sorted(by_q[qid], key=lambda t: t.traj_id)
        costs = [_cost(t, cfg.cost_measure) for t in trajs]
        qual: dict[int, float] = {}
        per_kind: dict[str, list[PreferencePair]] = {k: [] for k in KINDS}
        for i in range(len(trajs)):
            for j in range(i + 1, len(trajs)):
                a, b = trajs[i], trajs[j]
                ca, cb = costs[i], costs[j]
                if a.correct is not None and b.correct is not None and bool(a.correct) != bool(b.correct):
                    if not cfg.outcome:
                        continue
                    good, bad = (a, b) if a.correct else (b, a)
                    stats["outcome"]["candidates"] += 1
                    est = " (outcomes estimated)" if good.correct_is_estimate or bad.correct_is_estimate else ""
                    per_kind["outcome"].append(PreferencePair(
                        query_id=qid, preferred=good.traj_id, rejected=bad.traj_id, kind="outcome", margin=1.0,
                        reason=f"outcome: preferred is correct, rejected is wrong{est}"))
                    continue
                if (a.correct is None) != (b.correct is None):
                    continue                       # an ungraded and a graded one: outcome not comparable
                rel = _rel_diff(ca, cb)
                same = _outcome_word(a)
                if rel >= cfg.cost_margin:
                    if not cfg.cost:
                        continue
                    stats["cost"]["candidates"] += 1
                    (cheap, c_lo), (dear, c_hi) = sorted([(a, ca), (b, cb)], key=lambda x: x[1])
                    per_kind["cost"].append(PreferencePair(
                        query_id=qid, preferred=cheap.traj_id, rejected=dear.traj_id, kind="cost", margin=rel,
                        reason=(f"cost: same outcome ({same}); {cfg.cost_measure} "
                                f"{_fmt_cost(c_lo, cfg.cost_measure)} vs {_fmt_cost(c_hi, cfg.cost_measure)}, "
                                f"{rel:.0%} cheaper (margin {cfg.cost_margin:.0%})")))
                elif rel <= cfg.similar_cost:
                    if not cfg.process:
                        continue
                    for k in (i, j):
                        if k not in qual:
                            qual[k] = float(label.score(trajs[k]))
                    qa, qb = qual[i], qual[j]
                    if math.isnan(qa) or math.isnan(qb):
                        continue
                    stats["process"]["candidates"] += 1
                    d = abs(qa - qb)
                    if d <= cfg.tie_margin:
                        stats["process"]["dropped_tie"] += 1
                        continue
                    (hi_t, hi_q, hi_c), (lo_t, lo_q, lo_c) = sorted([(a, qa, ca), (b, qb, cb)],
                                                                    key=lambda x: -x[1])
                    per_kind["process"].append(PreferencePair(
                        query_id=qid, preferred=hi_t.traj_id, rejected=lo_t.traj_id, kind="process", margin=d,
                        reason=(f"process: same outcome ({same}), similar {cfg.cost_measure} "
                                f"({_fmt_cost(hi_c, cfg.cost_measure)} vs {_fmt_cost(lo_c, cfg.cost_measure)}); "
                                + label.explain(hi_t, hi_q, lo_t, lo_q))))
                else:
                    stats["cost"]["dropped_tie"] += 1     # same outcome, cost gap neither clear nor small
        rng = _query_rng(seed, qid)
        if cfg.balance_outcome == "cost" and per_kind["outcome"]:
            cost_of = {t.traj_id: c for t, c in zip(trajs, costs)}
            per_kind["outcome"], dropped = _balance_by_cost(per_kind["outcome"], cost_of, rng)
            stats["outcome"]["dropped_balance"] += dropped
        kept: list[PreferencePair] = []
        for k in KINDS:
            sel, dropped = _subsample(per_kind[k], cfg.max_per_kind, rng)
            stats[k]["dropped_cap"] += dropped
            kept += sel
        kept, dropped = _subsample(kept, cfg.max_per_query, rng)
        if dropped:
            cap_query += dropped
        out += kept
    summ = pair_summary(out)
    for k in KINDS:
        stats[k].update(summ[k])
    stats.update(trajectories=n_traj, queries=len(by_q), excluded_ungraded=0 if cfg.pair_ungraded else n_ungraded,
                 dropped_cap_query=cap_query)
    return out, stats


def build_pairs(trajectories: Iterable[Trajectory], cfg: PairsConfig | None = None,
                seed: int = 0, queries: Mapping[str, str] | None = None,
                label: ProcessLabel | None = None) -> list[PreferencePair]:
    """Preference pairs of every query's trajectories (see the module docstring).

    Deterministic for a seed and independent of input order: queries in sorted order, trajectories within
    a query sorted by ``traj_id``, pairs by kind (outcome, cost, process) then by that order.  Never pairs
    trajectories of different queries.  Duplicate trajectory ids are an error.
    """
    return build_pairs_with_stats(trajectories, cfg, seed, queries, label)[0]


def pair_summary(pairs: Iterable[PreferencePair]) -> dict[str, dict[str, Any]]:
    """Per kind: ``count``, ``queries`` (with at least one pair of the kind), ``margin_mean``/``_min``/``_max``
    (None without pairs)."""
    by: dict[str, list[PreferencePair]] = {k: [] for k in KINDS}
    for p in pairs:
        by.setdefault(p.kind, []).append(p)
    out = {}
    for k, ps in by.items():
        m = [p.margin for p in ps]
        out[k] = {"count": len(ps), "queries": len({p.query_id for p in ps}),
                  "margin_mean": float(np.mean(m)) if m else None, "margin_min": float(min(m)) if m else None,
                  "margin_max": float(max(m)) if m else None}
    return out


# ------------------------------------------------------------------------------------------------ IO

def write_pairs(path: str | os.PathLike, pairs: Iterable[PreferencePair]) -> Path:
    """Write pairs as JSONL (atomically: a temporary file renamed into place). Returns the path."""
    return atomic_write_jsonl(path, (p.to_dict() for p in pairs), separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


_PAIR_FIELDS = {"query_id": "a string", "preferred": "a string", "rejected": "a string", "kind": "a string",
                "margin": "a finite number", "reason": "a string"}


def read_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Read pairs written by :func:`write_pairs`; a bad row raises :class:`~roro_jax.types.InputError`
    (a ``ValueError``) naming file, line and field. The same two trajectories may form one pair only
    (a second row for them, in either order, is an error naming both lines)."""
    required = ("query_id", "preferred", "rejected", "kind")
    out = []
    first: dict[frozenset, int] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: a pair must be a JSON object")
        missing = [k for k in required if k not in row]
        if missing:
            raise InputError(f"{where}: missing field(s) {missing}")
        for k, v in row.items():
            if k not in _PAIR_FIELDS:
                raise InputError(f"{where}: unknown field {k!r}")
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  if k == "margin" else isinstance(v, str))
            if not ok:
                raise InputError(f"{where}: field {k!r}: expected {_PAIR_FIELDS[k]}, got {v!r:.80}")
        if row["kind"] not in KINDS:
            raise InputError(f"{where}: kind must be one of {KINDS}, got {row['kind']!r}")
        if row["preferred"] == row["rejected"]:
            raise InputError(f"{where}: preferred and rejected are the same trajectory")
        key = frozenset((row["preferred"], row["rejected"]))
        if key in first:
            raise InputError(f"{where}: duplicate pair of {row['preferred']!r} and {row['rejected']!r} "
                             f"(first on line {first[key]})")
        first[key] = lineno
        out.append(PreferencePair.from_dict(row))
    return out


def pairs_from_file(trajectories_path: str | os.PathLike, out_path: str | os.PathLike,
                    cfg: PairsConfig | None = None, seed: int = 0,
                    queries: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read a trajectory JSONL file, build the pairs, write them as JSONL to ``out_path`` and the
    statistics as JSON next to it (``<out_path>.stats.json``).  Returns the statistics.

    The file is read by :func:`~roro_jax.store.read_trajectory_file`: a torn last line is skipped with a
    warning; any other bad line, a key that appears twice, or a file with no trajectory raises
    :class:`~roro_jax.store.StoreCorruptError` naming the file (and line). Zero pairs from a non-empty file
    (e.g. every trajectory of a query has the same outcome and cost) is a :class:`NoPairsWarning`."""
    trajs = read_trajectory_file(trajectories_path)
    pairs, stats = build_pairs_with_stats(trajs, cfg, seed, queries)
    if not pairs:
        warnings.warn(f"{trajectories_path}: 0 preference pairs from {stats['trajectories']} trajectories of "
                      f"{stats['queries']} queries ({stats['excluded_ungraded']} ungraded excluded): a pair needs two "
                      "graded trajectories of one query that differ in outcome, cost or process quality",
                      NoPairsWarning, stacklevel=2)
    out = write_pairs(out_path, pairs)
    atomic_write_json(out.with_name(out.name + ".stats.json"), stats, indent=1)
    return stats
