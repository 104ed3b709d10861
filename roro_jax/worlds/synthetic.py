"""A synthetic routing world, entirely in JAX: the built-in batch for tests, benchmarks and the smoke demo.

Each query has up to ``steps`` routing steps (random lengths, at least half). Step features are standard
normal; feature 0 is the small model's *confidence* signal. A step is *critical* when its confidence is
low (feature 0 < ``crit_threshold``): if the router keeps a critical step, the solution goes wrong with
probability ``fail_prob``. Escalating exactly the critical steps therefore maximises
``1[correct] - λ_c * escalation share``, which lets tests check that the router learns the right thing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SyntheticBatch(NamedTuple):
    features: jnp.ndarray  # [Q, T, F]
    mask: jnp.ndarray  # [Q, T]
    critical: jnp.ndarray  # [Q, T] bool


def make_queries(key, queries: int, steps: int, features: int, crit_threshold: float = -1.0) -> SyntheticBatch:
    k1, k2 = jax.random.split(key)
    feats = jax.random.normal(k1, (queries, steps, features), jnp.float32)
    lengths = jax.random.randint(k2, (queries,), max(steps // 2, 1), steps + 1)
    mask = (jnp.arange(steps)[None, :] < lengths[:, None]).astype(jnp.float32)
    feats = feats * mask[..., None]
    critical = (feats[..., 0] < crit_threshold) & (mask > 0)
    return SyntheticBatch(feats, mask, critical)


def outcomes(key, actions, critical, mask, fail_prob: float = 0.9):
    """``(correct [N], escalation_share [N])`` of routed trajectories (actions [N, T], 1 = escalate)."""
    kept_critical = critical & (actions == 0)
    fail = jax.random.bernoulli(key, fail_prob, kept_critical.shape) & kept_critical
    correct = (~jnp.any(fail, axis=-1)).astype(jnp.float32)
    share = jnp.sum(actions * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
    return correct, share


def reward_batch(correct, actions, mask) -> dict[str, jnp.ndarray]:
    """The reward batch of routed trajectories (the fields of :mod:`roro_jax.worlds.reward_fields`; the
    synthetic world has no text, so one step counts as one token): ``correct``, ``large_share``,
    ``escalation_rate`` (both the escalated share of the steps), ``small_tokens``, ``large_tokens``."""
    m = mask.astype(jnp.float32)
    large = jnp.sum(actions * m, -1)
    steps = jnp.sum(m, -1)
    share = large / jnp.maximum(steps, 1.0)
    return {"correct": jnp.asarray(correct, jnp.float32), "large_share": share, "escalation_rate": share,
            "small_tokens": steps - large, "large_tokens": large}


def expand_groups(x, group_size: int):
    """[Q, ...] -> [Q * G, ...] group-major (each query repeated G times)."""
    return jnp.repeat(x, group_size, axis=0)
