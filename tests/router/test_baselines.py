"""Baseline policies: decisions on constructed observations, GMM EM on synthetic data, replay-world use."""

from __future__ import annotations

import numpy as np
import pytest

from roro_jax.router.baselines import (GMM2, ConfidenceThreshold, RandomPolicy, SteerPolicy, TrimThr,
                                       confidence_sweep, fit_gmm2, hash_uniforms, lrm_only, random_sweep,
                                       replay_policy, row_uniforms, srm_only, steer_sweep, trim_thr_actions,
                                       trim_thr_sweep)
from roro_jax.router.features import LOGPROB_NAMES, PRM_NAMES
from roro_jax.router.policies import StepObservation
from roro_jax.types import ESCALATE, KEEP


def obs_of(conf, features=None, seeds=None, step=None):
    conf = np.asarray(conf, np.float64)
    n = len(conf)
    if features is None:
        features = np.zeros((n, len(LOGPROB_NAMES)), np.float32)
        features[:, 0] = conf
    o = StepObservation(features=np.asarray(features, np.float32), confidence=conf,
                        step_index=np.zeros(n, np.int32) if step is None else np.asarray(step),
                        conf_history=[np.zeros(0)] * n, query_ids=[f"q{i}" for i in range(n)],
                        sample_idx=np.zeros(n, np.int64))
    if seeds is not None:
        o.row_seeds = np.asarray(seeds, np.int64)
    return o


def test_constant_baselines():
    o = obs_of([0.1, 0.9, 0.5])
    a, lp = srm_only().act(o, np.random.default_rng(0))
    assert a.tolist() == [KEEP] * 3 and lp.tolist() == [0, 0, 0]
    a, _ = lrm_only().act(o, np.random.default_rng(0))
    assert a.tolist() == [ESCALATE] * 3
    assert srm_only().batch_invariant and lrm_only().policy_id == "lrm_only"


def test_confidence_threshold_decisions():
    o = obs_of([0.1, 0.49, 0.5, 0.51, 0.99])
    a, lp = ConfidenceThreshold(0.5).act(o, np.random.default_rng(0))
    assert a.tolist() == [1, 1, 0, 0, 0]  # strictly below escalates
    assert np.all(lp == 0)
    # a named feature column, and "higher is less confident" features (entropy)
    f = np.zeros((3, len(LOGPROB_NAMES)), np.float32)
    ent = LOGPROB_NAMES.index("mean_entropy")
    f[:, ent] = [0.1, 1.0, 2.0]
    a, _ = ConfidenceThreshold(0.5, feature="mean_entropy", higher_is_confident=False).act(
        obs_of([1, 1, 1], f), np.random.default_rng(0))
    assert a.tolist() == [0, 1, 1]
    with pytest.raises(KeyError, match="unknown logprob feature"):
        ConfidenceThreshold(0.5, feature="nope")
    ids = [p.policy_id for p in confidence_sweep((0.2, 0.5))]
    assert ids == ["conf_thr0.2", "conf_thr0.5"]


def test_trim_thr_decisions_and_errors():
    f = np.zeros((4, len(PRM_NAMES)), np.float32)
    f[:, 0] = [0.2, 0.6, 0.59, 0.95]
    a, _ = TrimThr(0.6).act(obs_of([1, 1, 1, 1], f), np.random.default_rng(0))
    assert a.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="prm"):
        TrimThr(0.5).act(obs_of([0.1, 0.2]), np.random.default_rng(0))  # logprob-width features
    assert len(trim_thr_sweep()) == 19


def test_random_policy_rate_logp_and_row_seeds():
    n = 20000
    seeds = np.arange(n) * 7 + 3
    o = obs_of(np.full(n, 0.5), seeds=seeds)
    p = RandomPolicy(0.3, seed=1)
    a, lp = p.act(o, np.random.default_rng(0))
    assert abs(a.mean() - 0.3) < 0.015
    np.testing.assert_allclose(lp[a == 1], np.log(0.3), rtol=1e-6)
    np.testing.assert_allclose(lp[a == 0], np.log(0.7), rtol=1e-6)
    # a row's draw depends on its own seed only: same decisions in any batch composition / order
    perm = np.random.default_rng(1).permutation(n)[:500]
    a2, _ = p.act(obs_of(np.full(500, 0.5), seeds=seeds[perm]), np.random.default_rng(99))
    assert np.array_equal(a2, a[perm])
    # a different policy seed gives different draws; without row_seeds the rng is used
    a3, _ = RandomPolicy(0.3, seed=2).act(o, np.random.default_rng(0))
    assert (a3 != a).mean() > 0.2
    u1 = row_uniforms(obs_of([0.5] * 5), np.random.default_rng(5))
    u2 = row_uniforms(obs_of([0.5] * 5), np.random.default_rng(5))
    assert np.array_equal(u1, u2)
    assert [q.policy_id for q in random_sweep((0.1, 0.5))] == ["random_p0.1", "random_p0.5"]
    with pytest.raises(ValueError):
        RandomPolicy(1.5)


def test_hash_uniforms_are_uniform_and_pure():
    u = hash_uniforms(np.arange(100000), 7)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert hist.min() > 9500
    assert np.array_equal(u[:10], hash_uniforms(np.arange(10), 7))
    assert not np.array_equal(u[:10], hash_uniforms(np.arange(10), 8))


@pytest.mark.parametrize("true", [
    ((0.3, 0.7), (0.25, 0.8), (0.08, 0.06)),
    ((0.5, 0.5), (-2.0, 3.0), (1.0, 0.5)),
    ((0.8, 0.2), (0.6, 0.9), (0.1, 0.03)),
])
def test_fit_gmm2_recovers_known_components(true):
    w, mu, sd = true
    rng = np.random.default_rng(0)
    n = 20000
    z = rng.random(n) < w[0]
    x = np.where(z, rng.normal(mu[0], sd[0], n), rng.normal(mu[1], sd[1], n))
    g = fit_gmm2(rng.permutation(x))
    assert g.converged
    np.testing.assert_allclose(g.weights, w, atol=0.02)
    np.testing.assert_allclose(g.means, mu, atol=0.03 * (1 + np.abs(mu).max()))
    np.testing.assert_allclose(g.stds, sd, rtol=0.08)
    assert g.means[0] < g.means[1]
    # the fit is deterministic
    assert fit_gmm2(x) == fit_gmm2(x)


def test_fit_gmm2_errors_and_degenerate_data():
    with pytest.raises(ValueError, match="at least 2"):
        fit_gmm2([0.5])
    with pytest.raises(ValueError, match="all values are equal"):
        fit_gmm2([0.5, 0.5, 0.5])
    g = fit_gmm2([0.1] * 50 + [0.9] * 50)  # two point masses: stds floored, proper posteriors
    np.testing.assert_allclose(g.means, (0.1, 0.9), atol=1e-6)
    assert min(g.stds) >= 1e-3
    assert np.isfinite(g.posterior_low(np.array([0.0, 0.5, 1.0]))).all()


def test_steer_policy_posterior_threshold():
    g = GMM2(weights=(0.5, 0.5), means=(0.2, 0.8), stds=(0.1, 0.1))
    post = g.posterior_low(np.array([0.1, 0.5, 0.9]))
    assert post[0] > 0.99 and abs(post[1] - 0.5) < 1e-9 and post[2] < 0.01
    o = obs_of([0.1, 0.45, 0.49, 0.51, 0.55, 0.9])
    a, _ = SteerPolicy(g, 0.5).act(o, np.random.default_rng(0))
    assert a.tolist() == [1, 1, 1, 0, 0, 0]  # posterior crosses 0.5 at the midpoint of equal components
    a_lo, _ = SteerPolicy(g, 0.01).act(o, np.random.default_rng(0))
    a_hi, _ = SteerPolicy(g, 0.99).act(o, np.random.default_rng(0))
    assert a_lo.sum() >= a.sum() >= a_hi.sum()
    sweep = steer_sweep(g, (0.1, 0.9))
    assert [p.policy_id for p in sweep] == ["steer_g0.1", "steer_g0.9"]


def _toy_world():
    from roro_jax.worlds.replay import Episode, ReplayWorld

    def ep(i, sp, lp, sc, lc):
        return Episode(f"e{i}", "t", "q", "1", tuple(f"s{j}" for j in range(len(sp))), tuple(sp),
                       tuple([10] * len(sp)), sc, "1", tuple(f"l{j}" for j in range(len(lp))), tuple(lp),
                       tuple([20] * len(lp)), lc, "1")

    return ReplayWorld([ep(0, [0.9, 0.3, 0.8], [0.9, 0.9, 0.9], False, True),
                        ep(1, [0.2, 0.95], [0.8, 0.8, 0.7], True, True),
                        ep(2, [0.7, 0.6, 0.5, 0.4], [0.9, 0.9], False, True)])


def test_baselines_in_replay_world():
    world = _toy_world()
    for thr in (0.35, 0.65, 0.85):
        acts, _, route = world.rollout(replay_policy(TrimThr(thr)))
        ref = trim_thr_actions(world, [thr])[0]
        r_ref = world.route(ref)
        assert np.array_equal(route.escalated, r_ref.escalated)
        assert np.array_equal(route.large_tokens, r_ref.large_tokens)
    # all-keep / all-escalate through the adapter equal the world's own action arrays
    _, _, r0 = world.rollout(replay_policy(srm_only()))
    assert np.array_equal(r0.large_tokens, world.route(world.all_keep()).large_tokens)
    _, _, r1 = world.rollout(replay_policy(lrm_only()))
    assert np.array_equal(r1.large_tokens, world.route(world.all_escalate()).large_tokens)
    # random: seeded, reproducible; G samples via shape
    a1, _, _ = world.rollout(replay_policy(RandomPolicy(0.5), seed=3), shape=(4,))
    a2, _, _ = world.rollout(replay_policy(RandomPolicy(0.5), seed=3), shape=(4,))
    assert np.array_equal(a1, a2) and a1.shape[:2] == (4, 3)
    # confidence threshold / STEER read the PRM score as confidence there
    _, _, rc = world.rollout(replay_policy(ConfidenceThreshold(0.65)))
    assert np.array_equal(rc.escalated, world.route(trim_thr_actions(world, [0.65])[0]).escalated)
    g = fit_gmm2(world.small_prm[world.small_prm > 0])
    escalated = []
    for gamma in (0.1, 0.5, 0.99):  # posteriors here: 0.079 and 0.127 on two confident steps, ~1 elsewhere
        _, _, rs = world.rollout(replay_policy(SteerPolicy(g, gamma)))
        # a proposal's PRM score does not depend on earlier actions, so STEER's route is the action array
        # "escalate where the posterior of the low-confidence component exceeds gamma"
        ref = world.route((g.posterior_low(world.small_prm) > gamma).astype(np.int8))
        assert np.array_equal(rs.escalated, ref.escalated) and np.array_equal(rs.large_tokens, ref.large_tokens)
        escalated.append(int(rs.escalated.sum()))
    assert escalated[0] > escalated[1] >= escalated[2] > 0  # gamma matters, and STEER escalates something
