"""Exploratory routing policies for stage 1 of RoRo (DESIGN.md §1): diverse, seeded trajectories for
preference pairs.

- random escalation at a sweep of rates (:class:`~roro_jax.router.baselines.RandomPolicy`);
- threshold sweeps on a confidence feature (:class:`~roro_jax.router.baselines.ConfidenceThreshold`);
- :class:`CriticalFirst`: escalate a window of 1..k steps starting at the first *sharp confidence drop*;
- :class:`AntiCritical`: controls that escalate the most confident steps instead.

All policies are stateless functions of the observation: what a trajectory did earlier is recomputed from
``obs.conf_history`` (the confidences of its earlier proposals, oldest first), so they give the same
decision whatever rows share a batch (``batch_invariant``), and random choices are pure hashes of the
rollout's per-row seeds and the policy's seed.

**Drop rule.** Step ``t`` (with confidence ``c_t`` and earlier confidences ``c_0..c_{t-1}``) is a sharp
drop when ``t >= min_history`` and ``mean(c_0..c_{t-1}) - c_t >= drop``. The window starts at the first
such step ``d`` (earlier steps are already written, so a window "around" the drop can only start there)
and covers ``d .. d+w-1``; ``w`` is ``window`` if given, else drawn uniformly from ``1..k`` per trajectory
(a pure hash of query id, sample index and seed). Steps of the window are escalated whatever their
confidence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from roro_jax.router.baselines import ConfidenceThreshold, RandomPolicy, _fmt, hash_uniforms
from roro_jax.router.policies import Policy, StepObservation


def first_drop(history: np.ndarray, current: float, *, drop: float, min_history: int = 1) -> int | None:
    """Index of the first sharp drop among ``history + [current]`` (see the module docstring), or None."""
    c = np.concatenate([np.asarray(history, np.float64).reshape(-1), [float(current)]])
    for t in range(max(min_history, 1), len(c)):
        if c[:t].mean() - c[t] >= drop:
            return t
    return None


def _traj_uniform(query_id: str, sample_idx: int, seed: int) -> float:
    h = hashlib.blake2b(f"{query_id}|{int(sample_idx)}".encode(), digest_size=8).digest()
    return float(hash_uniforms(np.array([int.from_bytes(h, "little") & 0x7FFFFFFFFFFFFFFF]), seed)[0])


def _history(obs: StepObservation, i: int) -> np.ndarray:
    if not obs.conf_history:
        si = int(np.asarray(obs.step_index)[i])
        if si > 0:
            raise ValueError("this policy needs obs.conf_history (the rollout provides it)")
        return np.zeros(0)
    return np.asarray(obs.conf_history[i], np.float64).reshape(-1)


class CriticalFirst:
    """Escalate a window of steps starting at the trajectory's first sharp confidence drop.

    Args:
      k: largest window (steps); the window length is drawn from ``1..k`` per trajectory unless
        ``window`` fixes it.
      drop: how far below the mean of the earlier confidences a step must fall to count as a drop.
      min_history: earliest step index at which a drop can be detected (needs earlier steps to compare).
      seed: salt of the per-trajectory window draw.
    """

    batch_invariant = True

    def __init__(self, k: int = 3, *, drop: float = 0.15, window: int | None = None, min_history: int = 1,
                 seed: int = 0, policy_id: str | None = None):
        if k < 1 or (window is not None and window < 1):
            raise ValueError(f"CriticalFirst: k={k} and window={window} must be >= 1")
        if drop <= 0:
            raise ValueError(f"CriticalFirst: drop={drop} must be > 0")
        self.k, self.drop, self.window, self.min_history, self.seed = int(k), float(drop), window, \
            int(min_history), int(seed)
        w = f"w{window}" if window is not None else f"k{k}"
        self.policy_id = policy_id or f"critical_first_{w}_d{_fmt(self.drop)}" + (f"_s{seed}" if seed else "")

    def window_length(self, query_id: str, sample_idx: int) -> int:
        if self.window is not None:
            return int(self.window)
        return 1 + int(_traj_uniform(query_id, sample_idx, 0xC41F + self.seed) * self.k)

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(obs)
        out = np.zeros(n, np.int32)
        conf = np.asarray(obs.confidence, np.float64)
        for i in range(n):
            hist = _history(obs, i)
            d = first_drop(hist, conf[i], drop=self.drop, min_history=self.min_history)
            if d is None:
                continue
            t = len(hist)  # position of the current step in its trajectory's proposals
            qid = obs.query_ids[i] if len(obs.query_ids) else str(i)
            g = int(obs.sample_idx[i]) if obs.sample_idx is not None else 0
            if d <= t < d + self.window_length(qid, g):
                out[i] = 1
        return out, np.zeros(n, np.float32)


class AntiCritical:
    """Control: escalate confident steps. Step ``t`` is escalated when its confidence is at least
    ``threshold`` and at most ``k - 1`` earlier steps of the trajectory met that rule (so at most ``k``
    escalations, spent on the first confident steps).
    """

    batch_invariant = True

    def __init__(self, k: int = 2, *, threshold: float = 0.8, policy_id: str | None = None):
        if k < 1:
            raise ValueError(f"AntiCritical: k={k} must be >= 1")
        self.k, self.threshold = int(k), float(threshold)
        self.policy_id = policy_id or f"anti_critical_k{k}_thr{_fmt(self.threshold)}"

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(obs)
        conf = np.asarray(obs.confidence, np.float64)
        out = np.zeros(n, np.int32)
        for i in range(n):
            earlier = int(np.sum(_history(obs, i) >= self.threshold))
            out[i] = int(conf[i] >= self.threshold and earlier < self.k)
        return out, np.zeros(n, np.float32)


@dataclass(frozen=True)
class ExplorationConfig:
    """Which exploratory policies :func:`exploration_suite` builds (the lead may embed this in the config)."""

    random_rates: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7)
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    threshold_feature: str | None = None  # None: obs.confidence (mean chosen-token prob)
    critical_k: tuple[int, ...] = (1, 2, 3)
    critical_drop: float = 0.15
    anti_k: tuple[int, ...] = (1, 2)
    anti_threshold: float = 0.8
    seed: int = 0


def exploration_suite(cfg: ExplorationConfig = ExplorationConfig()) -> list[Policy]:
    """Random-rate sweep + threshold sweep + critical-first windows + anti-critical controls (unique ids)."""
    pols: list[Policy] = [RandomPolicy(r, seed=cfg.seed) for r in cfg.random_rates]
    pols += [ConfidenceThreshold(t, feature=cfg.threshold_feature) for t in cfg.thresholds]
    pols += [CriticalFirst(k, drop=cfg.critical_drop, seed=cfg.seed) for k in cfg.critical_k]
    pols += [AntiCritical(k, threshold=cfg.anti_threshold) for k in cfg.anti_k]
    ids = [p.policy_id for p in pols]
    if len(set(ids)) != len(ids):
        raise ValueError(f"exploration_suite: duplicate policy ids {sorted(i for i in ids if ids.count(i) > 1)}")
    return pols
