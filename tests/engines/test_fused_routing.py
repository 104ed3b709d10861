"""The fused routed sampler (roro_jax.engines.fused_routing) against the host loop (roro_jax.rollout), on
the shipped toy models: token-identical trajectories, actions and costs for every device policy kind."""

from __future__ import annotations

import asyncio

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.engines.flax_engine import FlaxEngine
from roro_jax.engines.fused_routing import FusedRouter, answer_dfa, feed_chunk, feed_rows
from roro_jax.rollout import RolloutConfig, has_final_answer, rollout
from roro_jax.router import device_policies as DP
from roro_jax.router.baselines import (ConfidenceThreshold, RandomPolicy, SteerPolicy, TrimThr, fit_gmm2,
                                       lrm_only, srm_only)
from roro_jax.router.exploration import AntiCritical, CriticalFirst
from roro_jax.router.policies import RouterPolicy, StepObservation
from roro_jax.worlds.toy import toy_heldout, toy_model_dir

CFG = RolloutConfig(max_steps=8, max_step_tokens=16, temperature=0.0, logprobs=5)


@pytest.fixture(scope="module")
def engines():
    kw = dict(max_batch=32, batch_buckets=(32,), min_prompt_bucket=32, min_new_bucket=16)
    return (FlaxEngine(toy_model_dir("small"), name="toy-small", **kw),
            FlaxEngine(toy_model_dir("large"), name="toy-large", **kw))


@pytest.fixture(scope="module")
def problems():
    return toy_heldout(6, seed=1)


def _learner():
    from roro_jax.config import Config
    from roro_jax.rl.trainer import RouterLearner

    return RouterLearner(Config(), 16, escalate_bias=-1.0)


@pytest.fixture(scope="module")
def policies():
    learner = _learner()
    gmm = fit_gmm2(np.r_[np.linspace(0.9, 0.99, 20), np.linspace(0.995, 1.0, 40)])
    return [ConfidenceThreshold(0.995), ConfidenceThreshold(0.5, feature="mean_entropy", higher_is_confident=False),
            RandomPolicy(0.3, seed=1), srm_only(), lrm_only(), SteerPolicy(gmm, 0.5),
            RouterPolicy(learner, learner.params, greedy=True, threshold=0.3, policy_id="router_greedy"),
            RouterPolicy(learner, learner.params, policy_id="router_sampled"),
            CriticalFirst(2, drop=0.002), AntiCritical(1, threshold=0.999)]


def host_many(problems, small, large, policies, cfg, *, group_size, seed, annotate=None):
    async def main():
        return await asyncio.gather(*(rollout(problems, small, large, p, cfg, group_size=group_size, seed=seed,
                                              annotate=annotate) for p in policies))

    return dict(zip([p.policy_id for p in policies], asyncio.run(main())))


def assert_same(host, fused, *, atol=1e-5):
    """Same records: every field equal, features / log-probs / confidences to float tolerance."""
    assert len(host) == len(fused)
    for a, b in zip(host, fused):
        da, db = a.to_dict(), b.to_dict()
        assert len(da["steps"]) == len(db["steps"]), (a.traj_id, a.meta["end_reason"], b.meta["end_reason"])
        for sa, sb in zip(da["steps"], db["steps"]):
            for k in ("features", "action_logp", "confidence"):
                np.testing.assert_allclose(sa.pop(k), sb.pop(k), atol=atol, rtol=1e-5, err_msg=f"{a.traj_id} {k}")
            assert sa == sb, a.traj_id
        ma, mb = da.pop("meta"), db.pop("meta")
        assert ma == mb, a.traj_id
        assert da == db, a.traj_id
        assert (a.small_tokens, a.large_tokens, a.n_escalations) == (b.small_tokens, b.large_tokens, b.n_escalations)


@pytest.fixture(scope="module")
def greedy_runs(engines, problems, policies):
    small, large = engines
    from roro_jax.tasks.toy import trajectory_meta  # the toy world's labels in meta, on both paths

    router = FusedRouter(small, large, CFG, batch=32)
    fused = router.route_many(problems, policies, group_size=2, seed=5, annotate=trajectory_meta)
    host = host_many(problems, small, large, policies, CFG, group_size=2, seed=5, annotate=trajectory_meta)
    return host, fused, router.stats


def test_every_policy_kind_matches_the_host_loop_greedy(greedy_runs, policies):
    host, fused, stats = greedy_runs
    assert stats["fallback_rows"] == 0  # the device made every decision itself
    for p in policies:
        assert_same(host[p.policy_id], fused[p.policy_id])
    # the comparison is not vacuous: both actions, several end reasons, escalated and kept steps
    assert all(t.meta["world"] == "toy" and "wrong_steps" in t.meta for p in policies for t in fused[p.policy_id])
    acts = {s.action for p in policies for t in fused[p.policy_id] for s in t.steps}
    assert acts == {0, 1}
    ends = {t.meta["end_reason"] for p in policies for t in fused[p.policy_id]}
    assert "eos" in ends  # the toy models end with "Answer: N</s>" (the answer rule: see the next tests)
    for pid in ("random_p0.3_s1", "router_sampled", "conf_thr0.995"):
        esc = [s.action for t in fused[pid] for s in t.steps]
        assert 0 < np.mean(esc) < 1, pid


def test_rows_of_different_lengths_share_a_batch(greedy_runs, engines, problems):
    host, fused, _ = greedy_runs
    small, _ = engines
    from roro_jax.rollout import default_prompt

    lengths = {len(small.encode(default_prompt(p))) for p in problems}
    assert len(lengths) > 1  # prompts of different token lengths, left-padded in one program
    trajs = fused["conf_thr0.995"]
    assert len({len(t.steps) for t in trajs}) > 1
    assert len({s.n_tokens for t in trajs for s in t.steps}) > 1


def test_sampled_decoding_matches_the_host_loop(engines, problems, policies):
    """Temperature 1.2: the same per-row keys, so the same draws (no recompile: temperature is traced)."""
    small, large = engines
    cfg = RolloutConfig(max_steps=8, max_step_tokens=16, temperature=1.2, logprobs=5)
    router = FusedRouter(small, large, cfg, batch=32)
    fused = router.route_many(problems, policies, group_size=2, seed=11)
    host = host_many(problems, small, large, policies, cfg, group_size=2, seed=11)
    for p in policies:
        assert_same(host[p.policy_id], fused[p.policy_id])
    greedy = FusedRouter(small, large, CFG, batch=32).route_many(problems, policies, group_size=2, seed=11)
    texts = lambda runs: [t.answer_text for p in policies for t in runs[p.policy_id]]  # noqa: E731
    assert texts(greedy) != texts(fused)  # sampling did change something


@pytest.mark.parametrize("long_step,max_context", [("continue", None), ("end", None), ("continue", 24)])
def test_step_token_and_context_limits(engines, problems, long_step, max_context):
    """Steps cut at max_step_tokens, trajectories cut at max_steps or by the context limit, as in the host
    loop (one compiled program for the three: the limits are traced)."""
    small, large = engines
    cfg = RolloutConfig(max_steps=3, max_step_tokens=5, temperature=0.0, logprobs=5, long_step=long_step,
                        max_context_tokens=max_context)
    pols = [RandomPolicy(0.5), ConfidenceThreshold(0.999)]
    fused = FusedRouter(small, large, cfg, batch=32).route_many(problems, pols, group_size=2, seed=2)
    host = host_many(problems, small, large, pols, cfg, group_size=2, seed=2)
    for p in pols:
        assert_same(host[p.policy_id], fused[p.policy_id])
    trajs = [t for p in pols for t in fused[p.policy_id]]
    assert any(s.finish_reason == "length" and s.n_tokens == 5 for t in trajs for s in t.steps)
    ends = {t.meta["end_reason"] for t in trajs}
    assert all(len(t.steps) <= 3 for t in trajs)
    if max_context:
        assert "context" in ends and len({len(t.steps) for t in trajs}) > 1
    else:
        assert ends == ({"max_steps"} if long_step == "continue" else {"long_step"})


# steps of at most 9 tokens: "Answer: N" is cut before its EOS, so the answer rule ends the trajectory
ANSWER_CFG = RolloutConfig(max_steps=8, max_step_tokens=9, temperature=0.0, logprobs=5)
ANSWER_POLICIES = [ConfidenceThreshold(0.995), RandomPolicy(0.3, seed=1)]


def test_answer_steps_end_the_trajectory(engines, problems):
    small, large = engines
    router = FusedRouter(small, large, ANSWER_CFG, batch=32)
    fused = router.route_many(problems, ANSWER_POLICIES, group_size=2, seed=5)
    assert router.stats["fallback_rows"] == 0
    host = host_many(problems, small, large, ANSWER_POLICIES, ANSWER_CFG, group_size=2, seed=5)
    for p in ANSWER_POLICIES:
        assert_same(host[p.policy_id], fused[p.policy_id])
    assert "answer" in {t.meta["end_reason"] for p in ANSWER_POLICIES for t in fused[p.policy_id]}


def test_disagreeing_rows_fall_back_to_the_host_loop(engines, problems):
    """With an answer detector that never fires, the host's re-check catches every answer step and those
    rows are routed by the host loop: the result is still the host loop's."""
    small, large = engines
    router = FusedRouter(small, large, ANSWER_CFG, batch=32)
    router.tables = dict(router.tables, ans_accept=jnp.zeros_like(router.tables["ans_accept"]))
    fused = router.route_many(problems, ANSWER_POLICIES, group_size=2, seed=5)
    assert router.stats["fallback_rows"] > 0
    host = host_many(problems, small, large, ANSWER_POLICIES, ANSWER_CFG, group_size=2, seed=5)
    for p in ANSWER_POLICIES:
        assert_same(host[p.policy_id], fused[p.policy_id])


def test_policies_without_a_device_version_use_the_host_loop(engines, problems):
    small, large = engines

    class Odd:
        policy_id = "odd"
        batch_invariant = True

        def act(self, obs, rng):
            a = (np.asarray(obs.step_index) % 2).astype(np.int32)
            return a, np.zeros(len(obs), np.float32)

    assert DP.to_device_policy(Odd()) is None
    fused = FusedRouter(small, large, CFG, batch=32).route_many(problems[:2], [Odd()], seed=1)
    host = host_many(problems[:2], small, large, [Odd()], CFG, group_size=1, seed=1)
    assert_same(host["odd"], fused["odd"])


# ------------------------------------------------------------------------------------------ the KV caches
@pytest.mark.parametrize("gathered", [False, True])
def test_cross_prefill_cache_equals_a_full_forward(engines, gathered):
    """Prefill a prompt, feed two chunks of different lengths per row into the step regions: the valid
    cache slots equal a prefill over the concatenated tokens, and the logits equal a full forward. With
    ``gathered``, only the rows that feed are computed (gathered into a 2-row bucket, scattered back)."""
    small, _ = engines
    from flax import nnx

    model = nnx.merge(small.sampler.graphdef, small.sampler.state)
    rng = np.random.default_rng(0)
    B, P, N, T = 3, 8, 6, 2
    plen = np.array([8, 5, 3])
    n1, n2 = np.array([6, 2, 0]), np.array([3, 6, 4])
    prompt = np.zeros((B, P), np.int32)
    pmask = np.zeros((B, P), bool)
    for b in range(B):
        prompt[b, P - plen[b]:] = rng.integers(4, 100, plen[b])
        pmask[b, P - plen[b]:] = True
    chunks = [rng.integers(4, 100, (B, N)).astype(np.int32) for _ in range(T)]

    @jax.jit
    def run(prompt, pmask, c1, c2):
        cache = model.init_cache(B, P + T * N)
        _, cache = model.prefill(prompt, pmask, cache)
        kv = jnp.concatenate([pmask, jnp.zeros((B, T * N), bool)], 1)
        pos = jnp.sum(pmask, 1).astype(jnp.int32)
        if gathered:
            lg0 = jnp.zeros((B, model.config.vocab_size), jnp.float32)
            lg, cache, kv = feed_rows(model, cache, kv, lg0, c1, jnp.asarray(n1), pos, P, (2, 3))
            logits, cache, kv = feed_rows(model, cache, kv, lg, c2, jnp.asarray(n2), pos + jnp.asarray(n1), P + N,
                                          (2, 3))
            return logits, cache, kv
        _, cache, kv = feed_chunk(model, cache, kv, c1, jnp.asarray(n1), pos, P)
        logits, cache, kv = feed_chunk(model, cache, kv, c2, jnp.asarray(n2), pos + jnp.asarray(n1), P + N)
        return logits, cache, kv

    logits, cache, kv = jax.device_get(run(prompt, pmask, *chunks))
    for b in range(B):
        seq = np.r_[prompt[b, P - plen[b]:], chunks[0][b, :n1[b]], chunks[1][b, :n2[b]]]
        ref_cache = model.init_cache(1, len(seq))
        _, ref_cache = model.prefill(jnp.asarray(seq[None]), jnp.ones((1, len(seq)), bool), ref_cache)
        valid = np.flatnonzero(kv[b])
        assert len(valid) == len(seq)
        for (k, v), (rk, rv) in zip(cache, ref_cache):
            np.testing.assert_allclose(np.asarray(k)[b][:, valid], np.asarray(rk)[0], atol=2e-5)
            np.testing.assert_allclose(np.asarray(v)[b][:, valid], np.asarray(rv)[0], atol=2e-5)
        full = model(jnp.asarray(seq[None]))[0, -1]
        np.testing.assert_allclose(logits[b], np.asarray(full), atol=1e-4)


# ------------------------------------------------------------------------------------------ pieces
def test_float64_comparisons_are_exact():
    rng = np.random.default_rng(0)
    x = rng.random(20000).astype(np.float32)
    c = np.r_[x[:5000].astype(np.float64), x[5000:10000] + rng.normal(0, 1e-9, 5000), rng.random(10000)]
    hi, lo = DP.split64_array(c)
    xs = jnp.asarray(x)
    np.testing.assert_array_equal(np.asarray(DP.lt64(xs, hi, lo)), x.astype(np.float64) < c)
    np.testing.assert_array_equal(np.asarray(DP.gt64(xs, hi, lo)), x.astype(np.float64) > c)
    np.testing.assert_array_equal(np.asarray(DP.ge64(xs, hi, lo)), x.astype(np.float64) >= c)


def _obs(rng, n, T=6):
    feats = rng.random((n, 16)).astype(np.float32)
    feats[:, 0] = 0.9 + 0.1 * rng.random(n).astype(np.float32)
    t = rng.integers(0, T, n)
    hist = (0.9 + 0.1 * rng.random((n, T))).astype(np.float32)
    seeds = rng.integers(0, 2**31, n)
    host = StepObservation(feats, feats[:, 0].astype(np.float64), t.astype(np.int32),
                           [hist[i, :t[i]].astype(np.float64) for i in range(n)], [f"q{i}" for i in range(n)],
                           np.arange(n))
    host.row_seeds = seeds
    return host, dict(features=jnp.asarray(feats), confidence=jnp.asarray(feats[:, 0]),
                      step_index=jnp.asarray(t, jnp.int32), conf_history=jnp.asarray(hist)), seeds


@pytest.mark.parametrize("make", [
    lambda: RandomPolicy(0.37, seed=3), lambda: ConfidenceThreshold(0.95),
    lambda: ConfidenceThreshold(0.4, feature="mean_entropy", higher_is_confident=False),
    lambda: SteerPolicy(fit_gmm2(np.r_[np.linspace(0.9, 0.95, 30), np.linspace(0.97, 1, 30)]), 0.4),
    lambda: CriticalFirst(3, drop=0.03, seed=2), lambda: AntiCritical(2, threshold=0.95), srm_only, lrm_only,
    lambda: RouterPolicy(_learner(), policy_id="r"),
    lambda: RouterPolicy(_learner(), greedy=True, threshold=0.27, policy_id="rg")])
def test_device_policies_decide_as_the_host_policies(make):
    pol = make()
    rng = np.random.default_rng(1)
    host_obs, obs, seeds = _obs(rng, 512)
    a_host, lp_host = pol.act(host_obs, np.random.default_rng(0))
    d = DP.to_device_policy(pol)
    u_hi, u_lo = DP.row_uniforms_for(d, seeds)
    row = np.array([d.row_param(q, int(g)) if d.row_param else 0.0
                    for q, g in zip(host_obs.query_ids, host_obs.sample_idx)], np.float32)
    a, lp = jax.jit(lambda o: d.decide(o))(dict(obs, u_hi=u_hi, u_lo=u_lo, row_param=row))
    np.testing.assert_array_equal(np.asarray(a), a_host)
    np.testing.assert_allclose(np.asarray(lp), lp_host, atol=1e-5)
    if pol.policy_id not in ("srm_only", "lrm_only"):
        assert 0 < np.mean(a_host) < 1  # both actions occur


def test_trim_thr_device_version():
    pol = TrimThr(0.5)
    rng = np.random.default_rng(2)
    feats = rng.random((256, 5)).astype(np.float32)
    obs = StepObservation(feats, feats[:, 0].astype(np.float64), np.zeros(256, np.int32))
    a_host, _ = pol.act(obs, rng)
    a, _ = DP.to_device_policy(pol).decide({"features": jnp.asarray(feats)})
    np.testing.assert_array_equal(np.asarray(a), a_host)


def test_answer_detector_agrees_with_extract_answer_on_common_forms():
    texts = ["Answer: 12\n\n", "3 + 4 = 7\n\n", "answer:\n\n", "The answer is: 5", "#### 42", "####\n",
             "Final answer: x", "Answer: **", "answer answer: 3", "Answer: 3 answer:", "no", "ANSWER : 9"]
    chars = sorted({c for t in texts for c in t})
    nxt, acc = answer_dfa(chars)
    for t in texts:
        q = 0
        for ch in t:
            q = nxt[q, chars.index(ch)]
        assert bool(acc[q]) == has_final_answer(t), t


# ------------------------------------------------------------------------------------------ the toy world's hook
def test_toy_routing_fused_config_routes_through_the_fused_sampler(engines, problems, tmp_path):
    """``toy.routing=fused``: pipelines.toy.route_many gives the host loop's trajectories, and keeps the
    store's semantics (stored trajectories are skipped, new ones added)."""
    from pipelines import toy as T
    from roro_jax.config import load_config
    from roro_jax.store import TrajectoryStore

    small, large = engines
    over = ["world=toy", "rollout.max_steps=8", "rollout.max_step_tokens=16", "rollout.temperature=0",
            "rollout.logprobs=5", "toy.fused_batch=32"]
    cfg = load_config(None, [*over, "toy.routing=fused"])
    eng = T.ToyEngines(small, large)
    assert T.fused_router(cfg, eng) is not None
    assert T.fused_router(load_config(None, over), eng) is None  # the default is the host loop
    pols = ANSWER_POLICIES
    store = TrajectoryStore(tmp_path / "t.jsonl")
    fused = T.route_many(cfg, eng, problems[:4], pols, seed=3, store=store, progress=False)
    host = host_many(problems[:4], small, large, pols, cfg.rollout, group_size=1, seed=3, annotate=T.annotate_fn(cfg))
    for p in pols:
        assert_same(host[p.policy_id], fused[p.policy_id])
    assert len(list(store.iter())) == 8
    again = T.route_many(cfg, eng, problems[:5], pols, seed=3, store=store, progress=False)
    assert [t.query_id for t in again[pols[0].policy_id]] == [str(problems[4].id)]
    assert len(list(store.iter())) == 10


def test_study_routes_through_the_fused_sampler_with_the_host_loops_trajectories(engines, problems):
    """pipelines.study.route_all (every arm's routers in lock step, groups of samples) with
    ``toy.routing=fused``: the host loop's trajectories, in the order of the policies given."""
    from pipelines import study as S
    from pipelines import toy as T
    from roro_jax.config import load_config

    small, large = engines
    over = ["world=toy", "rollout.max_steps=8", "rollout.max_step_tokens=16", "rollout.temperature=0",
            "rollout.logprobs=5", "toy.fused_batch=32"]
    eng = T.ToyEngines(small, large)
    pols = ANSWER_POLICIES[::-1]
    fused = S.route_all(load_config(None, [*over, "toy.routing=fused"]), eng, problems[:3], pols, group_size=2,
                        seed=4)
    host = S.route_all(load_config(None, over), eng, problems[:3], pols, group_size=2, seed=4)
    assert [t[0].policy_id for t in fused] == [p.policy_id for p in pols]
    for h, f in zip(host, fused):
        assert len(h) == 6
        assert_same(h, f)


def test_toy_routing_rejects_unknown_values():
    from roro_jax.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="toy.routing"):
        load_config(None, ["toy.routing=gpu"])
