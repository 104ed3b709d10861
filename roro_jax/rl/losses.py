"""Clipped-ratio policy losses (PPO/GRPO family), KL estimators, and two-action closed forms.

Arrays are ``[B, T]``: B sequences (routed trajectories, or LM samples), T positions (routing steps for the
router, tokens for an LM); ``advantages`` is ``[B]``. Everything is pure and jittable.

Data parallelism: :func:`policy_loss_terms` returns the loss as ``numerator / denominator`` with both parts
additive over sequences, so a sharded batch gets the exact loss of the whole batch by ``psum``-ing them
(the denominators do not depend on the parameters). :func:`policy_loss` is ``terms -> loss, metrics``.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from roro_jax.registry import Registry

AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
_LOG_EPS = 1e-7


# ---------------------------------------------------------------------------------------------- KL ---
def kl_k1(logp, ref_logp):
    """k1 = log(p/q): unbiased, high variance, can be negative."""
    return logp - ref_logp


def kl_k2(logp, ref_logp):
    """k2 = 0.5 * (log(q/p))^2: low variance, biased."""
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp, ref_logp):
    """k3 = q/p - log(q/p) - 1: unbiased, non-negative (Schulman's estimator)."""
    log_r = ref_logp - logp
    return jnp.exp(log_r) - log_r - 1.0


def _log1mexp(logp):
    """log(1 - exp(logp)) for logp <= 0, numerically stable."""
    logp = jnp.minimum(logp, -_LOG_EPS)
    return jnp.where(logp > -0.693, jnp.log(-jnp.expm1(logp)), jnp.log1p(-jnp.exp(logp)))


def bernoulli_kl(logp, ref_logp):
    """Exact KL(pi || pi_ref) of a two-action policy from the log-prob of the taken action under each.

    With two actions the taken action's probability determines the whole distribution, so the KL is exact
    and costs no sampling: ``p log(p/q) + (1-p) log((1-p)/(1-q))``.
    """
    p = jnp.exp(logp)
    return p * (logp - ref_logp) + (1.0 - p) * (_log1mexp(logp) - _log1mexp(ref_logp))


def bernoulli_entropy(logp):
    """Entropy of a two-action policy from the log-prob of either action."""
    p = jnp.exp(logp)
    return -(p * logp + (1.0 - p) * _log1mexp(logp))


# name -> ``fn(logp, ref_logp) -> [B, T]`` per-position KL estimate; ``grpo.kl`` picks one by name
KL_ESTIMATORS: Registry[Callable] = Registry("KL estimator")
for _name, _fn in {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3, "exact": bernoulli_kl}.items():
    KL_ESTIMATORS.add(_name, _fn)


def register_kl(name: str, fn: Callable | None = None):
    """Add a KL estimator ``fn(logp, ref_logp) -> [B, T]`` as ``name`` (then ``grpo.kl=name``):
    ``register_kl("mine", fn)``, or as a decorator, ``@register_kl("mine")``."""
    if fn is None:
        return KL_ESTIMATORS.register(name)
    return KL_ESTIMATORS.add(name, fn)


# --------------------------------------------------------------------------------------- aggregation ---
def aggregate_terms(x, mask, agg: str):
    """``(numerator, denominator)`` of the aggregate of per-position values ``x`` [B, T].

    - ``token-mean``: sum over all valid positions / number of valid positions.
    - ``seq-mean-token-mean``: mean over sequences (with ≥ 1 valid position) of each sequence's mean.
    - ``seq-mean-token-sum-norm``: mean over sequences of (sum over positions / T), T = ``x.shape[-1]``
      the padded length (a constant, as in Dr. GRPO).
    Fully masked rows contribute to neither part; an all-masked batch gives 0 / 0, which the caller
    turns into 0 with ``max(den, 1)``-style guards (:func:`safe_div`).
    """
    m = mask.astype(x.dtype)
    if agg == "token-mean":
        return jnp.sum(x * m), jnp.sum(m)
    row_n = jnp.sum(m, -1)
    row_valid = (row_n > 0).astype(x.dtype)
    if agg == "seq-mean-token-mean":
        return jnp.sum(jnp.sum(x * m, -1) / jnp.maximum(row_n, 1.0)), jnp.sum(row_valid)
    if agg == "seq-mean-token-sum-norm":
        return jnp.sum(jnp.sum(x * m, -1) / x.shape[-1]), jnp.sum(row_valid)
    raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")


def safe_div(num, den):
    return num / jnp.maximum(den, 1e-12) * (den > 0)


# ------------------------------------------------------------------------------------------- loss ---
def policy_loss_terms(logp, old_logp, advantages, mask, *, ref_logp=None, clip_eps=0.2, clip_eps_high=None,
                      beta=0.0, kl="k3", agg="token-mean", entropy=None, entropy_coef=0.0):
    """Additive pieces of :func:`policy_loss`: a dict of sums (``*_sum``) and their denominators.

    ``loss = loss_sum / loss_den``; metric ``m = m_sum / tokens`` (token means over valid positions).
    """
    chex.assert_rank([logp, old_logp, mask], 2)
    chex.assert_equal_shape([logp, old_logp, mask])
    chex.assert_rank(advantages, 1)
    chex.assert_equal(advantages.shape[0], logp.shape[0])
    if agg not in AGGS:
        raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")
    kl_fn = KL_ESTIMATORS.get(kl)  # UnknownNameError listing the estimators
    eps_hi = clip_eps if clip_eps_high is None else clip_eps_high
    m = mask.astype(logp.dtype)
    adv = advantages.astype(logp.dtype)[:, None]
    log_ratio = jnp.where(m > 0, logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_hi)
    pg = jnp.maximum(pg1, pg2)
    per_pos = pg
    terms = {}
    if ref_logp is not None:
        kl_val = kl_fn(logp, ref_logp)
        kl_val = jnp.where(m > 0, kl_val, 0.0)
        per_pos = per_pos + beta * kl_val
        terms["kl_sum"] = jnp.sum(kl_val * m)
    if entropy is not None:
        ent = jnp.where(m > 0, entropy, 0.0)
        per_pos = per_pos - entropy_coef * ent
        terms["entropy_sum"] = jnp.sum(ent * m)
    loss_num, loss_den = aggregate_terms(per_pos, m, agg)
    pg_num, _ = aggregate_terms(pg, m, agg)
    terms.update(
        loss_sum=loss_num,
        loss_den=loss_den,
        pg_loss_sum=pg_num,
        clip_frac_sum=jnp.sum((pg2 > pg1).astype(m.dtype) * m),
        ratio_sum=jnp.sum(ratio * m),
        approx_kl_old_sum=jnp.sum(0.5 * log_ratio**2 * m),
        tokens=jnp.sum(m),
    )
    return terms


def finalize_terms(terms):
    """``terms -> (loss, metrics)``; use after (optionally) ``psum``-ing every term across devices.

    ``loss = loss_sum / loss_den`` and ``pg_loss = pg_loss_sum / loss_den``; any other ``name_sum`` becomes
    the token mean ``name = name_sum / tokens`` (or ``/ loss_den`` when the terms have no ``tokens``)."""
    loss = safe_div(terms["loss_sum"], terms["loss_den"])
    metrics = {"loss": loss}
    for key, value in terms.items():
        if key.endswith("_sum") and key != "loss_sum":
            name = key[:-4]
            den = terms["loss_den"] if name == "pg_loss" or "tokens" not in terms else terms["tokens"]
            metrics[name] = safe_div(value, den)
    return loss, metrics


def policy_loss(logp, old_logp, advantages, mask, *, ref_logp=None, clip_eps=0.2, clip_eps_high=None,
                beta=0.0, kl="k3", agg="token-mean", entropy=None, entropy_coef=0.0):
    """Clipped-ratio policy-gradient loss with optional KL-to-reference and entropy bonus.

    per position: ``max(-A r, -A clip(r, 1-clip_eps, 1+clip_eps_high)) + beta * KL - entropy_coef * H``
    with ``r = exp(logp - old_logp)``, aggregated by ``agg`` (:func:`aggregate_terms`).

    Args:
      logp, old_logp: [B, T] log-probs of the taken actions under the current / behaviour policy.
      advantages: [B] per-sequence advantages, broadcast over positions.
      mask: [B, T] 1 for valid positions.
      ref_logp: optional [B, T] reference log-probs for the KL term (``kl`` ∈ k1 | k2 | k3 | exact, where
        ``exact`` is the closed-form two-action KL, :func:`bernoulli_kl`).
      clip_eps, clip_eps_high: lower / upper clip range (asymmetric when ``clip_eps_high`` is given).
      entropy: optional [B, T] per-position policy entropy (reported; bonus ``entropy_coef``).
    Returns: ``(loss, metrics)``: loss scalar; metrics ``loss, pg_loss, clip_frac, ratio, approx_kl_old``
      plus ``kl`` / ``entropy`` when given. An all-masked batch gives loss 0.
    """
    return finalize_terms(policy_loss_terms(
        logp, old_logp, advantages, mask, ref_logp=ref_logp, clip_eps=clip_eps, clip_eps_high=clip_eps_high,
        beta=beta, kl=kl, agg=agg, entropy=entropy, entropy_coef=entropy_coef))


# ------------------------------------------------------------------------------ policy-loss registry ---
# name -> ``fn(logp, batch, hp) -> terms``; ``grpo.loss`` picks one by name. ``logp`` [B, T]: log-probs of the
# taken actions under the parameters being trained; ``batch``: ``old_logp`` [B, T], ``mask`` [B, T],
# ``advantages`` [B], ``entropy`` [B, T] and, with a reference policy, ``ref_logp`` [B, T]; ``hp``: the numbers
# ``clip_eps``, ``clip_eps_high``, ``beta``, ``entropy_coef`` (traced scalars: changing them does not
# recompile) and the names ``agg``, ``kl``. ``terms``: additive sums with ``loss_sum`` and ``loss_den`` (the
# latter independent of the parameters), as :func:`policy_loss_terms` returns them.
POLICY_LOSSES: Registry[Callable] = Registry("policy loss")


def register_policy_loss(name: str, fn: Callable | None = None):
    """Add a policy loss ``fn(logp, batch, hp) -> terms`` as ``name`` (then ``grpo.loss=name``):
    ``register_policy_loss("mine", fn)``, or as a decorator, ``@register_policy_loss("mine")``."""
    if fn is None:
        return POLICY_LOSSES.register(name)
    return POLICY_LOSSES.add(name, fn)


@register_policy_loss("grpo")
def grpo_loss_terms(logp, batch, hp):
    """GRPO's clipped-ratio loss (:func:`policy_loss_terms`) with the KL and entropy terms of ``hp``."""
    return policy_loss_terms(logp, batch["old_logp"], batch["advantages"], batch["mask"],
                             ref_logp=batch.get("ref_logp"), entropy=batch.get("entropy"),
                             clip_eps=hp.get("clip_eps", 0.2), clip_eps_high=hp.get("clip_eps_high"),
                             beta=hp.get("beta", 0.0), kl=hp.get("kl", "k3"), agg=hp.get("agg", "token-mean"),
                             entropy_coef=hp.get("entropy_coef", 0.0))


def bradley_terry_loss(score_preferred, score_rejected, weight=None):
    """Per-pair Bradley–Terry loss ``-log sigmoid(s_pref - s_rej)`` (optax style: caller reduces)."""
    loss = -jax.nn.log_sigmoid(score_preferred - score_rejected)
    return loss if weight is None else loss * weight
