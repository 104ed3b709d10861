import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.rl.losses import (bernoulli_entropy, bernoulli_kl, bradley_terry_loss, policy_loss,
                                policy_loss_terms)


def np_policy_loss(logp, old, adv, mask, ref=None, clip=0.2, clip_hi=None, beta=0.0, kl="k3",
                   agg="token-mean", ent=None, ent_coef=0.0):
    """Independent NumPy reference, loop over rows."""
    logp, old, mask = (np.asarray(a, np.float64) for a in (logp, old, mask))
    hi = clip if clip_hi is None else clip_hi
    B, T = logp.shape
    per = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if mask[b, t] == 0:
                continue
            r = np.exp(logp[b, t] - old[b, t])
            v = max(-adv[b] * r, -adv[b] * min(max(r, 1 - clip), 1 + hi))
            if ref is not None:
                lp, lq = logp[b, t], ref[b, t]
                if kl == "k1":
                    k = lp - lq
                elif kl == "k2":
                    k = 0.5 * (lq - lp) ** 2
                elif kl == "k3":
                    k = np.exp(lq - lp) - (lq - lp) - 1
                else:
                    p, q = np.exp(lp), np.exp(lq)
                    k = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
                v += beta * k
            if ent is not None:
                v -= ent_coef * ent[b, t]
            per[b, t] = v
    if agg == "token-mean":
        return per.sum() / max(mask.sum(), 1) if mask.sum() else 0.0
    rows = [b for b in range(B) if mask[b].sum() > 0]
    if not rows:
        return 0.0
    if agg == "seq-mean-token-mean":
        return np.mean([per[b].sum() / mask[b].sum() for b in rows])
    return np.mean([per[b].sum() / T for b in rows])


def random_inputs(seed, B=5, T=7, two_action=True):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, (B, T))
    logp = np.log(p).astype(np.float32)
    old = (logp + rng.normal(0, 0.3, (B, T))).astype(np.float32)
    old = np.minimum(old, -1e-3).astype(np.float32)
    ref = np.log(rng.uniform(0.05, 0.95, (B, T))).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    mask = (rng.random((B, T)) < 0.8).astype(np.float32)
    mask[1] = 0.0  # an all-masked row
    return logp, old, ref, adv, mask


AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLS = ["k1", "k2", "k3", "exact"]


class TestPolicyLoss(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_every_mode_against_numpy(self):
        logp, old, ref, adv, mask = random_inputs(0)
        ent = np.abs(np.random.default_rng(9).normal(size=logp.shape)).astype(np.float32)
        for agg, kl, clip_hi in itertools.product(AGGS, KLS, [None, 0.28]):
            f = self.variant(lambda *a: policy_loss(*a[:4], ref_logp=a[4], entropy=a[5], clip_eps=0.2,
                                                    clip_eps_high=clip_hi, beta=0.1, kl=kl, agg=agg,
                                                    entropy_coef=0.01))
            loss, metrics = f(logp, old, adv, mask, ref, ent)
            want = np_policy_loss(logp, old, adv, mask, ref, 0.2, clip_hi, 0.1, kl, agg, ent, 0.01)
            np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6, err_msg=f"{agg}/{kl}/{clip_hi}")
            assert set(metrics) >= {"loss", "pg_loss", "clip_frac", "kl", "entropy", "ratio"}

    def test_hand_checked_clip(self):
        # one row, two positions; ratio e^{0.5}=1.6487 (clipped to 1.2 for A>0), ratio e^{-0.5}=0.6065
        logp = jnp.array([[0.0, 0.0]]) - 0.1
        old = jnp.array([[-0.5, 0.5]]) - 0.1
        for adv, want in [(1.0, (-1.2 + -0.60653066) / 2), (-1.0, (1.64872127 + 0.8) / 2)]:
            loss, m = policy_loss(logp, old, jnp.array([adv]), jnp.ones((1, 2)))
            np.testing.assert_allclose(float(loss), want, rtol=1e-6)
            assert float(m["clip_frac"]) == 0.5

    def test_asymmetric_clip(self):
        logp, old = jnp.array([[0.0]]) - 0.1, jnp.array([[-0.5]]) - 0.1  # ratio 1.6487
        loss, _ = policy_loss(logp, old, jnp.array([1.0]), jnp.ones((1, 1)), clip_eps_high=0.5)
        np.testing.assert_allclose(float(loss), -1.5, rtol=1e-6)

    def test_on_policy_is_minus_mean_advantage(self):
        logp = jnp.log(jnp.full((3, 4), 0.3))
        adv = jnp.array([1.0, -2.0, 4.0])
        loss, m = policy_loss(logp, logp, adv, jnp.ones((3, 4)))
        np.testing.assert_allclose(float(loss), -1.0, rtol=1e-6)
        assert float(m["clip_frac"]) == 0.0

    def test_all_masked_batch_is_zero_and_finite_grad(self):
        logp, old, ref, adv, _ = random_inputs(1)
        mask = np.zeros_like(logp)
        for agg in AGGS:
            loss, _ = policy_loss(logp, old, adv, mask, agg=agg)
            assert float(loss) == 0.0
            g = jax.grad(lambda lp: policy_loss(lp, old, adv, mask, agg=agg)[0])(jnp.asarray(logp))
            assert np.all(np.asarray(g) == 0.0)

    def test_masked_positions_do_not_matter(self):
        logp, old, ref, adv, mask = random_inputs(2)
        poisoned = np.where(mask > 0, logp, 123.0).astype(np.float32)
        for agg in AGGS:
            a, _ = policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.1, agg=agg)
            b, _ = policy_loss(poisoned, old, adv, mask, ref_logp=ref, beta=0.1, agg=agg)
            np.testing.assert_allclose(float(a), float(b), rtol=1e-6)

    def test_gradient_matches_finite_differences(self):
        logp, old, ref, adv, mask = random_inputs(3, B=3, T=4)
        logp64 = logp.astype(np.float64)
        for agg, kl in itertools.product(AGGS, KLS):
            def f(lp):
                return policy_loss(lp, old, adv, mask, ref_logp=ref, beta=0.3, kl=kl, agg=agg)[0]

            g = np.asarray(jax.grad(f)(jnp.asarray(logp)))
            h = 1e-3
            num = np.zeros_like(logp64)
            for i, j in itertools.product(range(3), range(4)):
                e = np.zeros_like(logp64)
                e[i, j] = h
                num[i, j] = (np_policy_loss(logp64 + e, old, adv, mask, ref, beta=0.3, kl=kl, agg=agg)
                             - np_policy_loss(logp64 - e, old, adv, mask, ref, beta=0.3, kl=kl, agg=agg)) / (2 * h)
            np.testing.assert_allclose(g, num, rtol=2e-2, atol=2e-4, err_msg=f"{agg}/{kl}")

    def test_terms_are_additive_over_rows(self):
        """Summing the terms of two halves equals the terms of the whole (exact data parallelism)."""
        logp, old, ref, adv, mask = random_inputs(4, B=6)
        for agg in AGGS:
            whole = policy_loss_terms(logp, old, adv, mask, ref_logp=ref, beta=0.1, agg=agg)
            a = policy_loss_terms(logp[:3], old[:3], adv[:3], mask[:3], ref_logp=ref[:3], beta=0.1, agg=agg)
            b = policy_loss_terms(logp[3:], old[3:], adv[3:], mask[3:], ref_logp=ref[3:], beta=0.1, agg=agg)
            for k in whole:
                np.testing.assert_allclose(float(whole[k]), float(a[k] + b[k]), rtol=1e-5, atol=1e-6)

    def test_bad_mode(self):
        logp, old, ref, adv, mask = random_inputs(5)
        with pytest.raises(ValueError, match="agg"):
            policy_loss(logp, old, adv, mask, agg="sum")
        with pytest.raises(ValueError, match=r"unknown KL estimator 'k7'; registered: \['exact', 'k1', 'k2', 'k3'"):
            policy_loss(logp, old, adv, mask, ref_logp=ref, kl="k7")


def test_bernoulli_kl_and_entropy_closed_form():
    p = np.array([0.01, 0.3, 0.5, 0.9, 0.999])
    q = np.array([0.5, 0.2, 0.5, 0.95, 0.9])
    kl = np.asarray(bernoulli_kl(jnp.log(p), jnp.log(q)))
    want = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    np.testing.assert_allclose(kl, want, rtol=1e-4, atol=1e-6)
    assert kl[2] == pytest.approx(0.0, abs=1e-7)
    ent = np.asarray(bernoulli_entropy(jnp.log(p)))
    np.testing.assert_allclose(ent, -(p * np.log(p) + (1 - p) * np.log(1 - p)), rtol=1e-4)
    # symmetric in which action is named
    np.testing.assert_allclose(np.asarray(bernoulli_entropy(jnp.log(1 - p))), ent, rtol=1e-4)


def test_bradley_terry():
    s1, s2 = jnp.array([2.0, 0.0, -1.0]), jnp.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(bradley_terry_loss(s1, s2)), np.log1p(np.exp(-(np.asarray(s1 - s2)))),
                               rtol=1e-6)
    g = jax.grad(lambda a: bradley_terry_loss(a, s2).sum())(s1)
    np.testing.assert_allclose(np.asarray(g), -1 / (1 + np.exp(np.asarray(s1 - s2))), rtol=1e-5)


def test_bradley_terry_pair_weights_scale_each_pair():
    s1, s2 = jnp.array([2.0, 0.0, -1.0]), jnp.array([0.0, 0.0, 1.0])
    w = jnp.array([2.0, 0.5, 0.0])
    np.testing.assert_allclose(np.asarray(bradley_terry_loss(s1, s2, w)),
                               np.asarray(w) * np.log1p(np.exp(-(np.asarray(s1 - s2)))), rtol=1e-6)


def test_log1mexp_is_accurate_next_to_zero():
    """``log(1 - p)`` for p a hair below 1 (log p = -1e-6) in float32: 1 - exp(log p) loses every digit, the
    expm1 branch keeps them (the exact Bernoulli KL and entropy rely on it)."""
    from roro_jax.rl.losses import _log1mexp

    for lp in (-1e-6, -1e-3, -0.5, -0.7, -3.0):
        got = float(_log1mexp(jnp.float32(lp)))
        assert got == pytest.approx(np.log(-np.expm1(lp)), rel=1e-5), lp


def test_safe_div_gives_zero_for_an_empty_denominator():
    from roro_jax.rl.losses import safe_div

    np.testing.assert_allclose(np.asarray(safe_div(jnp.array([3.0, 1.0, 0.0]), jnp.array([0.0, 0.25, 0.0]))),
                               [0.0, 4.0, 0.0])


def test_entropy_bonus_only_when_asked():
    logp, old, ref, adv, mask = random_inputs(3)
    ent = np.random.default_rng(4).uniform(0.1, 0.7, logp.shape).astype(np.float32)
    base, _ = policy_loss(logp, old, adv, mask)
    with_ent, _ = policy_loss(logp, old, adv, mask, entropy=ent)  # no entropy_coef: recorded, no bonus
    assert float(with_ent) == pytest.approx(float(base), abs=1e-7)
    bonus, _ = policy_loss(logp, old, adv, mask, entropy=ent, entropy_coef=0.1)
    assert float(bonus) == pytest.approx(np_policy_loss(logp, old, adv, mask, ent=ent, ent_coef=0.1), rel=1e-5)


def test_logged_kl_to_the_old_policy_and_defaults_without_extras():
    """``approx_kl_old`` is the token mean of (log r)^2 / 2; ``policy_loss_terms`` adds no KL unless ``beta``
    is given; ``log(1 - p)`` stays finite at log p = 0 (clamped below 0)."""
    from roro_jax.rl.losses import _log1mexp, finalize_terms

    logp, old, ref, adv, mask = random_inputs(5)
    _, metrics = policy_loss(logp, old, adv, mask)
    m = mask.astype(np.float64)
    want = np.sum(0.5 * (logp.astype(np.float64) - old) ** 2 * m) / m.sum()
    assert float(metrics["approx_kl_old"]) == pytest.approx(want, rel=1e-5)
    with_ref, _ = finalize_terms(policy_loss_terms(logp, old, adv, mask, ref_logp=ref))
    without, _ = finalize_terms(policy_loss_terms(logp, old, adv, mask))
    assert float(with_ref) == pytest.approx(float(without), abs=1e-7)
    assert np.isfinite(float(_log1mexp(jnp.float32(0.0))))


def test_defaults_metrics_and_one_token_rows():
    """More mutation-testing gaps: ``policy_loss`` adds no KL without ``beta``; ``policy_loss_terms`` clips at
    0.2 by default like ``policy_loss``; the logged entropy is the token mean of the given entropies; a
    row with one valid token counts in full in ``seq-mean-token-mean``."""
    from roro_jax.rl.losses import finalize_terms

    logp, old, ref, adv, mask = random_inputs(6)
    ent = np.random.default_rng(7).uniform(0.1, 0.7, logp.shape).astype(np.float32)
    plain, _ = policy_loss(logp, old, adv, mask)
    with_ref, metrics = policy_loss(logp, old, adv, mask, ref_logp=ref, entropy=ent)
    assert float(with_ref) == pytest.approx(float(plain), abs=1e-7)
    m = mask.astype(np.float64)
    assert float(metrics["entropy"]) == pytest.approx(np.sum(ent * m) / m.sum(), rel=1e-5)
    lr = ref.astype(np.float64) - logp
    assert float(metrics["kl"]) == pytest.approx(np.sum((np.exp(lr) - lr - 1) * m) / m.sum(), rel=1e-4)
    direct, _ = finalize_terms(policy_loss_terms(logp, old, adv, mask))
    assert float(direct) == pytest.approx(float(plain), abs=1e-7)
    one = np.zeros_like(mask)
    one[:, 0] = 1.0  # one valid token per row
    got, _ = policy_loss(logp, old, adv, one, agg="seq-mean-token-mean")
    assert float(got) == pytest.approx(np_policy_loss(logp, old, adv, one, agg="seq-mean-token-mean"), rel=1e-5)
