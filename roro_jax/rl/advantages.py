"""Group-relative advantages (GRPO) and the registry of advantage estimators.

Rewards arrive as a flat vector of ``N = groups * group_size`` entries in group-major order (all samples
of query 0, then of query 1, ...).

An *advantage estimator* is a pure function ``fn(rewards [N], group_size, *, eps, ddof) -> [N]``;
``grpo.adv_scale`` picks one by name from :data:`ADVANTAGE_ESTIMATORS`:

- ``group`` / ``batch`` / ``none``: :func:`group_advantages` with that ``scale`` (GRPO, batch-std, Dr. GRPO);
- ``rloo``: :func:`rloo_advantages`, the leave-one-out baseline (REINFORCE with RLOO).

Add one with ``@register_advantage("mine")``; :func:`advantages` dispatches by name.
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from roro_jax.registry import Registry

SCALES = ("group", "batch", "none")


def _masked_std(x, valid, axis, ddof, keepdims=True):
    n = jnp.sum(valid, axis=axis, keepdims=keepdims)
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=axis, keepdims=keepdims) / jnp.maximum(n, 1)
    sq = jnp.sum(jnp.where(valid, (x - mean) ** 2, 0.0), axis=axis, keepdims=keepdims)
    return jnp.sqrt(sq / jnp.maximum(n - ddof, 1)) * (n - ddof > 0)


def _groups(rewards, group_size):
    """``rewards`` [N] as ``[N / group_size, group_size]`` float32, after checking the shapes."""
    if not isinstance(group_size, numbers.Integral) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    r = jnp.asarray(rewards, jnp.float32)
    chex.assert_rank(r, 1)
    if r.shape[0] == 0:
        raise ValueError("rewards is empty (no groups)")
    if r.shape[0] % group_size:
        raise ValueError(f"rewards has {r.shape[0]} entries, not a multiple of group_size={group_size}")
    return r.reshape(-1, group_size)


def group_advantages(rewards, group_size: int, *, scale: str = "group", eps: float = 1e-6, ddof: int = 1):
    """Advantages ``(r - mean_group) / (std + eps)`` for every sample.

    Args:
      rewards: [N] rewards, N = groups * group_size, group-major.
      group_size: samples per query (G).
      scale: ``"group"`` divides by the group's std, ``"batch"`` by the std of all (finite) rewards in the
        batch, ``"none"`` only centres by the group mean (Dr. GRPO).
      eps: added to the std.
      ddof: delta degrees of freedom of the std (1 = unbiased, as in most GRPO code; 0 = population).

    Non-finite rewards (NaN/inf) get advantage 0 and are left out of their group's statistics. A group whose
    finite rewards are all equal (zero variance), or that has fewer than two finite rewards, gets advantages
    exactly 0 (never NaN, never float noise / eps). An empty batch, ``group_size < 1`` or a batch size that
    is not a multiple of ``group_size`` raises ``ValueError`` (checked on shapes, so also under ``jit``).

    Returns: [N] float32 advantages.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    g = _groups(rewards, group_size)
    valid = jnp.isfinite(g)
    gz = jnp.where(valid, g, 0.0)
    n = jnp.sum(valid, axis=1, keepdims=True)
    mean = jnp.sum(gz, axis=1, keepdims=True) / jnp.maximum(n, 1)
    hi = jnp.max(jnp.where(valid, g, -jnp.inf), axis=1, keepdims=True)
    lo = jnp.min(jnp.where(valid, g, jnp.inf), axis=1, keepdims=True)
    constant = ~(hi > lo)  # also true for groups with < 2 finite rewards
    centred = jnp.where(valid & ~constant, gz - mean, 0.0)
    if scale == "group":
        denom = _masked_std(g, valid, 1, ddof) + eps
    elif scale == "batch":
        denom = _masked_std(g, valid, None, ddof) + eps
    else:
        denom = jnp.ones_like(centred)
    zero = constant | ~valid | (denom <= 0)
    adv = jnp.where(zero, 0.0, centred / jnp.where(zero, 1.0, denom))
    return adv.reshape(-1)


group_advantages_jit = jax.jit(group_advantages, static_argnames=("group_size", "scale", "ddof"))


def rloo_advantages(rewards, group_size: int, *, eps: float = 0.0, ddof: int = 1):
    """Leave-one-out advantages (RLOO): ``r_i - mean_{j != i} r_j`` over the finite rewards of ``i``'s group.

    Equal to ``n / (n - 1) * (r_i - mean_group)`` for a group of ``n`` finite rewards; no std scaling
    (``eps`` and ``ddof`` are accepted for the common signature and unused). Non-finite rewards get 0 and
    are left out of the baseline; a group with fewer than two finite rewards gets 0.
    """
    del eps, ddof
    g = _groups(rewards, group_size)
    valid = jnp.isfinite(g)
    gz = jnp.where(valid, g, 0.0)
    n = jnp.sum(valid, axis=1, keepdims=True)
    total = jnp.sum(gz, axis=1, keepdims=True)
    baseline = (total - gz) / jnp.maximum(n - 1, 1)
    return jnp.where(valid & (n > 1), gz - baseline, 0.0).reshape(-1)


AdvantageFn = Callable[..., jnp.ndarray]
# name -> ``fn(rewards [N], group_size, *, eps, ddof) -> [N]``; ``grpo.adv_scale`` picks one
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")
for _scale in SCALES:
    ADVANTAGE_ESTIMATORS.add(_scale, functools.partial(group_advantages, scale=_scale))
ADVANTAGE_ESTIMATORS.add("rloo", rloo_advantages)


def register_advantage(name: str):
    """Decorator adding ``fn(rewards, group_size, *, eps, ddof) -> [N]`` as the estimator ``name``
    (then ``grpo.adv_scale=name``)."""
    return ADVANTAGE_ESTIMATORS.register(name)


def advantages(rewards, group_size: int, *, estimator: str = "group", eps: float = 1e-6, ddof: int = 1):
    """Advantages [N] of ``rewards`` [N] by the registered estimator ``estimator`` (an unknown name raises
    :class:`~roro_jax.registry.UnknownNameError` listing the estimators)."""
    return ADVANTAGE_ESTIMATORS.get(estimator)(rewards, group_size, eps=eps, ddof=ddof)
