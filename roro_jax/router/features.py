"""Router state features: a registry of feature families, each a pure vectorised function.

Families (DESIGN.md §1):

- ``logprob`` (RoRo): statistics of the small model's token distributions over a proposed step, from
  top-k log-probabilities per token, plus routing context. Inputs have shape ``[..., L, k]`` (L tokens of
  one step, k top log-probs per token, any order) with a token mask ``[..., L]``.
- ``prm`` (TRIM-Agg): current PRM score, min and product of earlier PRM scores, step tokens / 300,
  step index / 30, computed over a whole sequence of steps ``[..., S]``.

Every function works on any leading batch shape, has no Python loop over tokens or steps, and accepts
NumPy or JAX arrays (it runs under ``jit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from roro_jax.registry import Registry

LOW_CONF = 0.5  # a token is "low-confidence" when its chosen-token probability is below this


@dataclass(frozen=True)
class FeatureFamily:
    name: str
    names: tuple[str, ...]
    fn: Callable

    @property
    def dim(self) -> int:
        return len(self.names)


# name -> FeatureFamily; ``router.features`` picks one
FEATURE_FAMILIES: Registry[FeatureFamily] = Registry("feature family")


def register_feature_family(name: str, names: tuple[str, ...]):
    """Decorator: ``@register_feature_family("mine", ("f1", "f2"))`` adds a family to the registry."""

    def deco(fn):
        FEATURE_FAMILIES.add(name, FeatureFamily(name, tuple(names), fn))
        return fn

    return deco


def get_family(name: str) -> FeatureFamily:
    """The family ``name`` (:class:`~roro_jax.registry.UnknownNameError`, a ``KeyError``, listing the
    registered families otherwise)."""
    return FEATURE_FAMILIES.get(name)


def _masked_mean(x, m, axis=-1):
    return jnp.sum(x * m, axis) / jnp.maximum(jnp.sum(m, axis), 1.0)


def _masked_min(x, m, axis=-1, empty=0.0):
    big = jnp.where(m > 0, x, jnp.inf)
    out = jnp.min(big, axis)
    return jnp.where(jnp.isinf(out), empty, out)


def _masked_max(x, m, axis=-1, empty=0.0):
    small = jnp.where(m > 0, x, -jnp.inf)
    out = jnp.max(small, axis)
    return jnp.where(jnp.isinf(out), empty, out)


LOGPROB_NAMES = (
    "mean_chosen_prob", "min_chosen_prob", "mean_chosen_logprob", "min_chosen_logprob",
    "std_chosen_logprob", "mean_entropy", "max_entropy", "mean_margin", "min_margin",
    "low_conf_share", "mean_top1_prob", "not_top1_share",
    "step_index", "step_len", "large_tokens_so_far", "escalation_rate_so_far",
)


def token_confidence(topk_logprobs, chosen_logprobs, mask):
    """Per-token statistics: (chosen prob, renormalised top-k entropy, top1-top2 prob margin, top1 prob)."""
    lp = jnp.asarray(topk_logprobs, jnp.float32)
    lp = jnp.where(jnp.isfinite(lp), lp, -1e4)  # missing top-k entries come as -inf
    p = jnp.exp(lp)
    q = p / jnp.maximum(jnp.sum(p, -1, keepdims=True), 1e-30)
    ent = -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.maximum(q, 1e-30)), 0.0), -1)
    top2 = jnp.sort(p, axis=-1)[..., ::-1][..., :2] if p.shape[-1] >= 2 else jnp.concatenate(
        [p, jnp.zeros_like(p)], -1)
    margin = top2[..., 0] - top2[..., 1]
    chosen = jnp.exp(jnp.asarray(chosen_logprobs, jnp.float32))
    return chosen, ent, margin, top2[..., 0]


@register_feature_family("logprob", LOGPROB_NAMES)
def logprob_features(topk_logprobs, chosen_logprobs, mask, *, step_index=0, large_tokens_so_far=0,
                     escalations_so_far=0, max_steps=30, max_step_tokens=256, token_scale=1000.0):
    """Features of one proposed step per leading index.

    Args:
      topk_logprobs: [..., L, k] top-k log-probs per token (padding rows are masked out).
      chosen_logprobs: [..., L] log-prob of the token actually sampled.
      mask: [..., L] 1 for real tokens.
      step_index, large_tokens_so_far, escalations_so_far: [...] routing context.
    Returns: [..., 16] float32 in the order of ``LOGPROB_NAMES``.

    Non-finite log-probs never make non-finite features: chosen log-probs are clipped to [-30, 0] (NaN
    counts as -30), and non-finite top-k entries count as missing.
    """
    m = jnp.asarray(mask, jnp.float32)
    clp = jnp.asarray(chosen_logprobs, jnp.float32)
    clp = jnp.where(jnp.isnan(clp), -30.0, clp)  # engine garbage: a NaN log-prob counts as the floor
    clp = jnp.where(m > 0, jnp.clip(clp, -30.0, 0.0), 0.0)
    chosen, ent, margin, top1 = token_confidence(topk_logprobs, clp, m)
    n = jnp.sum(m, -1)
    mean_lp = _masked_mean(clp, m)
    var_lp = _masked_mean((clp - mean_lp[..., None]) ** 2, m)
    top1_lp = jnp.log(jnp.maximum(top1, 1e-30))
    step_index = jnp.asarray(step_index, jnp.float32)
    feats = [
        _masked_mean(chosen, m),
        _masked_min(chosen, m, empty=1.0),
        mean_lp,
        _masked_min(clp, m),
        jnp.sqrt(var_lp),
        _masked_mean(ent, m),
        _masked_max(ent, m),
        _masked_mean(margin, m),
        _masked_min(margin, m, empty=1.0),
        _masked_mean((chosen < LOW_CONF).astype(jnp.float32), m),
        _masked_mean(top1, m),
        _masked_mean((clp < top1_lp - 1e-4).astype(jnp.float32), m),
        step_index / max_steps,
        n / max_step_tokens,
        jnp.asarray(large_tokens_so_far, jnp.float32) / token_scale,
        jnp.asarray(escalations_so_far, jnp.float32) / jnp.maximum(step_index, 1.0),
    ]
    feats = jnp.broadcast_arrays(*feats)
    return jnp.stack(feats, -1).astype(jnp.float32)


PRM_NAMES = ("prm_score", "prm_min_prev", "prm_prod_prev", "step_tokens_300", "step_index_30")


@register_feature_family("prm", PRM_NAMES)
def prm_features(prm_scores, step_tokens, mask=None):
    """TRIM-Agg features for every step of a sequence.

    Args:
      prm_scores: [..., S] PRM score of each step (the step the router is deciding on).
      step_tokens: [..., S] tokens of each step.
      mask: optional [..., S]; padded steps get zero features.
    Returns: [..., S, 5]: (score_t, min_{s<t} score_s, prod_{s<t} score_s, tokens_t/300, t/30);
    min/prod over an empty prefix are 1.
    """
    s = jnp.asarray(prm_scores, jnp.float32)
    tok = jnp.asarray(step_tokens, jnp.float32)
    ones = jnp.ones_like(s[..., :1])
    prev = jnp.concatenate([ones, s[..., :-1]], -1)
    min_prev = jax.lax.cummin(prev, axis=prev.ndim - 1)
    prod_prev = jnp.exp(jnp.cumsum(jnp.log(jnp.clip(prev, 1e-12, 1.0)), -1))
    idx = jnp.broadcast_to(jnp.arange(s.shape[-1], dtype=jnp.float32), s.shape)
    out = jnp.stack([s, min_prev, prod_prev, tok / 300.0, idx / 30.0], -1)
    if mask is not None:
        out = out * jnp.asarray(mask, jnp.float32)[..., None]
    return out
