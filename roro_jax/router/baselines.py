"""Baseline routing policies (DESIGN.md §1), all implementing :class:`~roro_jax.router.policies.Policy`.

- SRM-only / LRM-only: :func:`srm_only`, :func:`lrm_only` (a :class:`ConstantPolicy`).
- :class:`RandomPolicy` ``(p)``: escalate each step independently with probability p.
- :class:`ConfidenceThreshold` ``(threshold)``: escalate when the step's ``logprob``-family confidence
  (``obs.confidence``: mean chosen-token probability of the small model's proposal, or any named
  ``logprob`` feature) is below the threshold.
- :class:`TrimThr` ``(threshold)``: TRIM-Thr, escalate when the proposal's PRM score (the ``prm`` family's
  first feature) is below the threshold; for the replay world, also as action arrays
  (:func:`trim_thr_actions`).
- :class:`SteerPolicy` ``(gmm, gamma)``: STEER-style; a two-component 1-D Gaussian mixture over step
  confidence, fitted by EM (:func:`fit_gmm2`), escalates when the posterior of the low-mean component
  exceeds γ.

Each comes with a sweep helper returning one policy per parameter value (``random_sweep``,
``confidence_sweep``, ``trim_thr_sweep``, ``steer_sweep``), and :func:`replay_policy` adapts any policy to
:meth:`roro_jax.worlds.replay.ReplayWorld.rollout`.

**Randomness and batching.** The rollout decides rows in batches that form by timing. Every policy here is
``batch_invariant``: a row's decision depends only on that row. Random draws come from
:func:`row_uniforms`, a pure hash of the row's seed (``obs.row_seeds``, set by the rollout from
``(seed, query, sample, step)``) and the policy's own seed; without ``row_seeds`` they come from ``rng``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from roro_jax.router.policies import ConstantPolicy, Policy, StepObservation
from roro_jax.router.uniforms import hash_uniforms, row_uniforms  # noqa: F401  (re-exported)
from roro_jax.types import ESCALATE, KEEP

def _bernoulli_logp(actions: np.ndarray, p_escalate) -> np.ndarray:
    p = np.broadcast_to(np.asarray(p_escalate, np.float64), actions.shape)
    with np.errstate(divide="ignore"):
        lp = np.where(actions == ESCALATE, np.log(p), np.log1p(-p))
    return lp.astype(np.float32)


def _fmt(x: float) -> str:
    return f"{x:g}"


# ------------------------------------------------------------------------------------------ constant
def srm_only() -> ConstantPolicy:
    """Always keep (the small model alone)."""
    p = ConstantPolicy(KEEP)
    p.batch_invariant = True
    return p


def lrm_only() -> ConstantPolicy:
    """Always escalate (every step written by the large model; the small proposals still count)."""
    p = ConstantPolicy(ESCALATE)
    p.batch_invariant = True
    return p


# ------------------------------------------------------------------------------------------ random
class RandomPolicy:
    """Escalate each step independently with probability ``p``; ``logp`` is the Bernoulli log-prob
    (0 for p in {0, 1} on the only possible action)."""

    batch_invariant = True

    def __init__(self, p: float, *, seed: int = 0, policy_id: str | None = None):
        if not 0.0 <= p <= 1.0 or not math.isfinite(p):
            raise ValueError(f"RandomPolicy: p={p} must be in [0, 1]")
        self.p, self.seed = float(p), int(seed)
        self.policy_id = policy_id or f"random_p{_fmt(self.p)}" + (f"_s{seed}" if seed else "")

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        u = row_uniforms(obs, rng, salt=0x5EED0000 + self.seed)
        a = (u < self.p).astype(np.int32)
        return a, _bernoulli_logp(a, self.p)


def random_sweep(rates: Sequence[float] = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9), *, seed: int = 0) -> list[RandomPolicy]:
    return [RandomPolicy(r, seed=seed) for r in rates]


# ------------------------------------------------------------------------------------------ thresholds
class ConfidenceThreshold:
    """Escalate when the proposal's confidence is below ``threshold``.

    ``feature=None`` reads ``obs.confidence`` (the rollout's mean chosen-token probability of the small
    model's proposal); a name from :data:`roro_jax.router.features.LOGPROB_NAMES` reads that column of
    ``obs.features`` instead (with ``higher_is_confident=False`` for features such as entropies, where
    escalation happens *above* the threshold).
    """

    batch_invariant = True

    def __init__(self, threshold: float, *, feature: str | None = None, higher_is_confident: bool = True,
                 policy_id: str | None = None):
        self.threshold, self.feature, self.higher_is_confident = float(threshold), feature, higher_is_confident
        self._col = None
        if feature is not None:
            from roro_jax.router.features import LOGPROB_NAMES

            if feature not in LOGPROB_NAMES:
                raise KeyError(f"ConfidenceThreshold: unknown logprob feature {feature!r}; known: {LOGPROB_NAMES}")
            self._col = LOGPROB_NAMES.index(feature)
        name = "conf" if feature is None else feature
        self.policy_id = policy_id or f"{name}_thr{_fmt(self.threshold)}"

    def score(self, obs: StepObservation) -> np.ndarray:
        if self._col is None:
            return np.asarray(obs.confidence, np.float64)
        f = np.asarray(obs.features)
        if f.ndim != 2 or f.shape[1] <= self._col:
            raise ValueError(f"ConfidenceThreshold({self.feature!r}) needs logprob-family features, got "
                             f"shape {f.shape}")
        return f[:, self._col].astype(np.float64)

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.score(obs)
        esc = s < self.threshold if self.higher_is_confident else s > self.threshold
        return esc.astype(np.int32), np.zeros(len(obs), np.float32)


def confidence_sweep(thresholds: Sequence[float] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), *,
                     feature: str | None = None) -> list[ConfidenceThreshold]:
    return [ConfidenceThreshold(t, feature=feature) for t in thresholds]


class TrimThr:
    """TRIM-Thr: escalate when the small proposal's PRM score is below ``threshold``.

    Reads the score from ``obs.features[:, 0]``, the ``prm`` family's ``prm_score`` (the replay world's
    features); a feature matrix of another width is rejected.
    """

    batch_invariant = True

    def __init__(self, threshold: float, *, policy_id: str | None = None):
        self.threshold = float(threshold)
        self.policy_id = policy_id or f"trim_thr{_fmt(self.threshold)}"

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        from roro_jax.router.features import PRM_NAMES

        f = np.asarray(obs.features)
        if f.ndim != 2 or f.shape[1] != len(PRM_NAMES):
            raise ValueError(f"TrimThr needs the 'prm' feature family ({len(PRM_NAMES)} features: PRM score "
                             f"first), got features of shape {f.shape}")
        return (f[:, 0] < self.threshold).astype(np.int32), np.zeros(len(obs), np.float32)


def trim_thr_sweep(thresholds: Sequence[float] = tuple(np.round(np.linspace(0.05, 0.95, 19), 2))
                   ) -> list[TrimThr]:
    return [TrimThr(float(t)) for t in thresholds]


def trim_thr_actions(world, thresholds: Sequence[float]) -> np.ndarray:
    """TRIM-Thr on a :class:`~roro_jax.worlds.replay.ReplayWorld` as action arrays ``[K, E, T]`` (the
    world's own vectorised helper; equal to rolling out :class:`TrimThr` step by step)."""
    return world.threshold_actions(thresholds)


# ------------------------------------------------------------------------------------------ STEER
@dataclass(frozen=True)
class GMM2:
    """A two-component 1-D Gaussian mixture; component 0 has the lower mean."""

    weights: tuple[float, float]
    means: tuple[float, float]
    stds: tuple[float, float]
    loglik: float = float("nan")  # mean log-likelihood per point at the fit
    n_iter: int = 0
    converged: bool = True

    def log_joint(self, x) -> np.ndarray:
        """``log(w_j) + log N(x | mu_j, sd_j)`` with shape ``x.shape + (2,)``."""
        x = np.asarray(x, np.float64)[..., None]
        w, mu, sd = (np.asarray(v, np.float64) for v in (self.weights, self.means, self.stds))
        return np.log(w) - 0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)

    def posterior_low(self, x) -> np.ndarray:
        """P(component 0 = low mean | x), elementwise."""
        lj = self.log_joint(x)
        return np.exp(lj[..., 0] - np.logaddexp(lj[..., 0], lj[..., 1]))

    def to_dict(self) -> dict:
        return {"weights": list(self.weights), "means": list(self.means), "stds": list(self.stds),
                "loglik": self.loglik, "n_iter": self.n_iter, "converged": self.converged}


def fit_gmm2(x, *, max_iter: int = 500, tol: float = 1e-9, min_std: float = 1e-3) -> GMM2:
    """Fit a two-component 1-D Gaussian mixture to ``x`` by EM (pure NumPy, deterministic).

    Initialisation: means at the 25th and 75th percentiles, both stds the sample std, equal weights.
    Stops when the mean log-likelihood improves by less than ``tol``; stds are floored at ``min_std``
    (a component collapsing onto repeated values stays proper). Needs at least 2 finite points with
    some spread.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size < 2:
        raise ValueError(f"fit_gmm2: need at least 2 finite values, got {x.size}")
    spread = float(np.std(x))
    if spread <= 0:
        raise ValueError("fit_gmm2: all values are equal; a two-component mixture is not identifiable")
    mu = np.array([np.percentile(x, 25), np.percentile(x, 75)], np.float64)
    if mu[0] == mu[1]:
        mu = np.array([x.min(), x.max()], np.float64)
    sd = np.array([spread, spread], np.float64)
    w = np.array([0.5, 0.5], np.float64)
    prev, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):
        lj = np.log(w) - 0.5 * ((x[:, None] - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)
        norm = np.logaddexp(lj[:, 0], lj[:, 1])
        ll = float(norm.mean())
        r = np.exp(lj - norm[:, None])  # responsibilities [n, 2]
        nk = r.sum(0) + 1e-12
        w = nk / nk.sum()
        mu = (r * x[:, None]).sum(0) / nk
        sd = np.maximum(np.sqrt((r * (x[:, None] - mu) ** 2).sum(0) / nk), min_std)
        if ll - prev < tol:
            converged = True
            break
        prev = ll
    order = np.argsort(mu)
    return GMM2(tuple(float(v) for v in w[order]), tuple(float(v) for v in mu[order]),
                tuple(float(v) for v in sd[order]), ll, it, converged)


class SteerPolicy:
    """STEER-style: escalate when P(low-confidence component | step confidence) > ``gamma``.

    ``gmm`` is a :class:`GMM2` fitted (:func:`fit_gmm2`) on step confidences of calibration trajectories
    (for example the small model's own proposals on training queries); the confidence is
    ``obs.confidence`` (or the named ``logprob`` feature).
    """

    batch_invariant = True

    def __init__(self, gmm: GMM2, gamma: float, *, feature: str | None = None, policy_id: str | None = None):
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"SteerPolicy: gamma={gamma} must be in [0, 1]")
        self.gmm, self.gamma = gmm, float(gamma)
        self._score = ConfidenceThreshold(0.0, feature=feature).score
        self.policy_id = policy_id or f"steer_g{_fmt(self.gamma)}"

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        post = self.gmm.posterior_low(self._score(obs))
        return (post > self.gamma).astype(np.int32), np.zeros(len(obs), np.float32)


def steer_sweep(gmm: GMM2, gammas: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95), *,
                feature: str | None = None) -> list[SteerPolicy]:
    return [SteerPolicy(gmm, g, feature=feature) for g in gammas]


# ------------------------------------------------------------------------------------------ replay world
def replay_policy(policy: Policy, *, seed: int = 0, confidence_index: int = 0) -> Callable[[np.ndarray, int], np.ndarray]:
    """Adapt a :class:`Policy` to :meth:`ReplayWorld.rollout`'s ``policy(features_t [..., F], t)``.

    Each call builds a :class:`StepObservation` over the flattened rows with ``confidence`` =
    ``features[..., confidence_index]`` (the ``prm`` family's PRM score), ``step_index = t``, the rows'
    earlier confidences as ``conf_history`` (the adapter remembers them across calls; a call with
    ``t == 0`` starts over) and ``row_seeds`` derived from ``(seed, row, t)``.
    """
    state: dict = {"hist": None}

    def fn(features_t: np.ndarray, t: int) -> np.ndarray:
        f = np.asarray(features_t, np.float32)
        lead = f.shape[:-1]
        flat = f.reshape(-1, f.shape[-1])
        n = flat.shape[0]
        conf = flat[:, confidence_index].astype(np.float64)
        if t == 0 or state["hist"] is None or state["hist"].shape[0] != n:
            state["hist"] = np.zeros((n, 0), np.float64)
        hist = state["hist"]
        obs = StepObservation(features=flat, confidence=conf, step_index=np.full(n, t, np.int32),
                              conf_history=[hist[i] for i in range(n)], query_ids=[str(i) for i in range(n)],
                              sample_idx=np.arange(n))
        obs.row_seeds = (np.arange(n, dtype=np.int64) * 1_000_003 + int(t) * 7919 + int(seed) * 104_729)
        a, _ = policy.act(obs, np.random.default_rng([int(seed), int(t)]))
        state["hist"] = np.concatenate([hist, conf[:, None]], 1)
        return np.asarray(a, np.int8).reshape(lead)

    return fn
