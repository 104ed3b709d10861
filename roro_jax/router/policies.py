"""The routing-policy protocol, and the learned router as a policy.

A policy decides, for N live trajectories at once, whether to keep (0) or escalate (1) the step the
small model just proposed. It sees a :class:`StepObservation` and returns the actions and their
log-probabilities under the policy (0 for deterministic policies). Baselines and exploratory policies
implement the same protocol, so the rollout and the evaluation run them all through one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from roro_jax.buckets import round_up
from roro_jax.router.uniforms import row_uniforms
from roro_jax.types import ESCALATE, KEEP


@dataclass
class StepObservation:
    """What a policy sees for N trajectories deciding on their current step.

    features: [N, F] the configured feature family's vector of the proposed step.
    confidence: [N] a scalar confidence of the proposal (``logprob`` family: mean chosen-token prob;
      ``prm`` family: the PRM score), used by threshold-style baselines.
    step_index: [N] index of the step being decided.
    conf_history: per trajectory, the confidences of its earlier proposals (oldest first).
    query_ids, sample_idx: which trajectory each row is (for seeded per-trajectory behaviour).
    row_seeds: per-row seeds; a policy that draws its randomness from them (``batch_invariant = True``)
      decides each row the same whichever rows share its batch.
    """

    features: np.ndarray
    confidence: np.ndarray
    step_index: np.ndarray
    conf_history: list[np.ndarray] = field(default_factory=list)
    query_ids: Sequence[str] = ()
    sample_idx: np.ndarray | None = None
    row_seeds: np.ndarray | None = None  # [N] per-row seeds from the rollout (batch-invariant randomness)

    def __len__(self) -> int:
        return int(self.features.shape[0])


@runtime_checkable
class Policy(Protocol):
    policy_id: str

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(actions [N] int32 in {KEEP, ESCALATE}, logp [N] float32)``."""
        ...


class RouterPolicy:
    """The learned :class:`~roro_jax.router.mlp.RouterMLP` as a policy (sampled, or greedy at ``threshold``).

    Args:
      learner: a :class:`~roro_jax.rl.trainer.RouterLearner`, or any object with
        ``escalate_prob(features, params) -> [N]``.
      params: the parameters to act with (default: the learner's current ones, read at each call).
      greedy: escalate iff p(escalate) > ``threshold`` (evaluation); otherwise sample (training).

    Rows go through the jitted forward in blocks of ``ROW_BLOCK`` (the last one zero-padded): one compiled
    shape, and a row's probability does not depend on how many rows arrived with it (a matmul's
    rounding can depend on its row count), so a collection is bit-reproducible whatever the engines'
    timing. Sampling draws one uniform per row from ``obs.row_seeds`` when given (batch-invariant).
    """

    ROW_BLOCK = 64

    batch_invariant = True

    def __init__(self, learner, params=None, *, greedy: bool = False, threshold: float = 0.5,
                 policy_id: str = "router"):
        self.learner, self.params, self.greedy, self.threshold = learner, params, greedy, threshold
        self.policy_id = policy_id

    def escalate_prob(self, features) -> np.ndarray:
        x = np.asarray(features, np.float32)
        n, B = x.shape[0], self.ROW_BLOCK
        pad = np.zeros((round_up(n, B),) + x.shape[1:], np.float32)
        pad[:n] = x
        out = [np.asarray(self.learner.escalate_prob(pad[i:i + B], self.params), np.float64)
               for i in range(0, len(pad), B)]
        return np.concatenate(out)[:n]

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.escalate_prob(obs.features)
        if self.greedy:
            a = (p > self.threshold).astype(np.int32)
        else:
            a = (row_uniforms(obs, rng, salt=7) < p).astype(np.int32)
        p = np.clip(p, 1e-12, 1 - 1e-12)
        logp = np.where(a == ESCALATE, np.log(p), np.log1p(-p)).astype(np.float32)
        return a, logp


class ConstantPolicy:
    """SRM-only (always keep) or LRM-only (always escalate)."""

    def __init__(self, action: int, policy_id: str | None = None):
        if action not in (KEEP, ESCALATE):
            raise ValueError("action must be KEEP (0) or ESCALATE (1)")
        self.action = action
        self.policy_id = policy_id or ("srm_only" if action == KEEP else "lrm_only")

    def act(self, obs: StepObservation, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(obs)
        return np.full(n, self.action, np.int32), np.zeros(n, np.float32)
