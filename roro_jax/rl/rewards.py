"""Reward terms: a registry of pure functions of a trajectory batch, combined by weights.

A *trajectory batch* is a mapping of arrays with a leading axis N (one entry per trajectory, group-major),
e.g. ``correct`` [N] (1/0, NaN = unknown), ``large_share`` [N] (large-model token share in [0, 1]),
``process`` [N] (the Judge's normalised score). Nothing here knows about text.

Add a term without touching the trainer::

    from roro_jax.rl.rewards import register_reward

    @register_reward("brevity", needs=("small_tokens",))
    def brevity(batch):
        return -batch["small_tokens"] / 1000.0

then set ``reward.weights.brevity=0.1`` in the config (from the command line, load the module with
``roro ... --plugin my_module``: :mod:`roro_jax.plugins`). ``needs`` names the reward-batch fields the term
reads: each world documents the fields its reward batch holds (:mod:`roro_jax.worlds.reward_fields`), and a
term with a non-zero weight that needs a field the world lacks is a config error before training starts
(:mod:`roro_jax.preflight`). The combined reward is

    R = sum_i  w_i * term_i(batch)          (sum_then_normalize; advantages normalise R per group)
    R = sum_i  w_i * znorm_group(term_i)    (normalize_then_sum; each term z-scored within its group first)

With the default weights this is RoRo's ``R = 1[correct] + λ_p R_process − λ_c C``: the ``cost`` term is
already the *negative* cost, so every weight is a non-negative λ.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from roro_jax.registry import Registry
from roro_jax.rl.advantages import group_advantages

RewardFn = Callable[[Mapping[str, jnp.ndarray]], jnp.ndarray]
REWARD_TERMS: Registry[RewardFn] = Registry("reward term")
REWARD_NEEDS: dict[str, tuple[str, ...]] = {}  # term -> the reward-batch fields it reads
COMBINE_MODES = ("sum_then_normalize", "normalize_then_sum")


def register_reward(name: str, needs: Sequence[str] = ()):
    """Decorator adding ``fn(batch) -> [N]`` to the registry under ``name`` (replacing any previous one);
    ``needs``: the reward-batch fields ``fn`` reads (checked against the world before training)."""
    if isinstance(needs, str):
        needs = (needs,)

    def deco(fn: RewardFn) -> RewardFn:
        REWARD_TERMS.add(name, fn)
        REWARD_NEEDS[name] = tuple(needs)
        return fn

    return deco


def reward_needs(name: str) -> tuple[str, ...]:
    """The reward-batch fields the term ``name`` declared it reads (``()`` if it declared none)."""
    REWARD_TERMS.get(name)  # UnknownNameError for an unknown term
    return REWARD_NEEDS.get(name, ())


def _field(batch, key, term):
    if key not in batch:
        raise KeyError(f"reward term {term!r} needs batch field {key!r}; batch has {sorted(batch)}")
    return jnp.asarray(batch[key], jnp.float32)


@register_reward("outcome", needs=("correct",))
def outcome_reward(batch):
    """1 if the final answer is correct, 0 if wrong, NaN if unknown."""
    return _field(batch, "correct", "outcome")


@register_reward("cost", needs=("large_share",))
def cost_reward(batch):
    """Negative cost: minus the large-model token share of the trajectory (in [-1, 0])."""
    return -_field(batch, "large_share", "cost")


@register_reward("process", needs=("process",))
def process_reward(batch):
    """The Judge's rubric score of the trajectory, normalised to [0, 1] by the caller."""
    return _field(batch, "process", "process")


@register_reward("escalations", needs=("escalation_rate",))
def escalation_reward(batch):
    """Minus the fraction of steps escalated (a step-count cost, an alternative to token share)."""
    return -_field(batch, "escalation_rate", "escalations")


def _check_finite_or_nan(name: str, value) -> None:
    """NaN in a term means "unknown" (advantage 0, see ``group_advantages``); ±inf is a broken term."""
    if isinstance(value, jax.core.Tracer):  # under jit: values are not known here
        return
    v = np.asarray(value, np.float64)
    bad = np.flatnonzero(np.isinf(v))
    if bad.size:
        raise ValueError(f"reward term {name!r} is {v.flat[bad[0]]} at index {bad[0]} ({bad.size} infinite "
                         "entries); a term must be finite, or NaN where it is unknown")


def reward_terms(batch, weights: Mapping[str, float]) -> dict[str, jnp.ndarray]:
    """Evaluate every term with a non-zero weight; unknown names are an error listing the registry.

    NaN entries (e.g. ``correct`` unknown) pass through: they become advantage 0. An infinite entry, or a
    non-finite weight, raises ``ValueError`` naming the term and the index (before any jitted code).
    """
    for k in weights:
        REWARD_TERMS.get(k)  # UnknownNameError listing the registered terms
    bad = {k: w for k, w in weights.items() if not math.isfinite(w)}
    if bad:
        raise ValueError(f"reward weights must be finite, got {bad}")
    terms = {k: REWARD_TERMS.get(k)(batch) for k, w in weights.items() if w != 0}
    for k, v in terms.items():
        _check_finite_or_nan(k, v)
    return terms


def combine_rewards(terms: Mapping[str, jnp.ndarray], weights: Mapping[str, float], *,
                    mode: str = "sum_then_normalize", group_size: int | None = None, eps: float = 1e-6):
    """Weighted combination of evaluated terms → rewards [N] (see module docstring for the two modes).

    ``normalize_then_sum`` needs ``group_size``; a term constant within a group contributes 0 there.
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"combine mode must be one of {COMBINE_MODES}, got {mode!r}")
    if not terms:
        raise ValueError("no reward terms with non-zero weight")
    total = None
    for name, value in terms.items():
        v = jnp.asarray(value, jnp.float32)
        if mode == "normalize_then_sum":
            if group_size is None:
                raise ValueError("normalize_then_sum needs group_size")
            v = jnp.where(jnp.isfinite(v), group_advantages(v, group_size, scale="group", eps=eps), jnp.nan)
        total = weights[name] * v if total is None else total + weights[name] * v
    return total


def compute_rewards(batch, weights: Mapping[str, float], *, mode="sum_then_normalize", group_size=None,
                    eps=1e-6):
    """``(rewards [N], terms)``: evaluate the registered terms and combine them. Log ``terms`` separately."""
    terms = reward_terms(batch, weights)
    return combine_rewards(terms, weights, mode=mode, group_size=group_size, eps=eps), terms
