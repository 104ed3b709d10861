"""The stepwise routing loop with the real Flax engine on tiny Llama models (synthetic step LMs).

The small and the large model use *different* character tokenizers (the same characters in a different
id order), so every test also exercises cross-family routing (prefixes kept as text, encoded per engine).
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from roro_jax.engines.base import StepRequest
from roro_jax.engines.flax_engine import FlaxEngine, synthetic_step_lm
from roro_jax.rollout import (END_REASONS, RolloutConfig, default_prompt, derive_seed, has_final_answer,
                              rollout, rollout_sync)
from roro_jax.router.baselines import ConfidenceThreshold, RandomPolicy, lrm_only, srm_only
from roro_jax.router.exploration import CriticalFirst
from roro_jax.router.features import LOGPROB_NAMES
from roro_jax.router.policies import ConstantPolicy
from roro_jax.tasks import toy
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL, Step

CFG = RolloutConfig(max_steps=4, max_step_tokens=12, logprobs=5)


@pytest.fixture(scope="module")
def engines():
    tok_s = toy.build_tokenizer()
    tok_l = toy.build_tokenizer(alphabet=toy.DEFAULT_ALPHABET[::-1])  # same characters, other ids
    assert tok_s.encode("12") != tok_l.encode("12")
    kw = dict(max_batch=16, batch_buckets=(16,), min_prompt_bucket=64, min_new_bucket=16)
    small = FlaxEngine((synthetic_step_lm(tok_s, hidden=128, layers=2, seed=0, concentration=1.0), tok_s),
                       name="small", **kw)
    large = FlaxEngine((synthetic_step_lm(tok_l, hidden=128, layers=3, seed=1, concentration=0.2, answer=0.2),
                        tok_l), name="large", **kw)
    assert small.tokenizer_key != large.tokenizer_key
    return small, large


@pytest.fixture(scope="module")
def problems():
    return toy.generate(4, seed=0)


def reference(problems, group_size, seed, cfg, small, large, escalate_all):
    """What the loop must produce, written independently: step by step, each engine generating alone from the
    text prefix (all trajectories advance in lockstep, one engine call per step for all of them: the engine
    tests show a request's result does not depend on its batch). Returns [(proposal, kept result), ...] per
    trajectory, problem-major."""
    rows = [dict(p=p, g=g, ctx=default_prompt(p), out=[], empty=0, done=False)
            for p in problems for g in range(group_size)]
    for t in range(cfg.max_steps):
        live = [r for r in rows if not r["done"]]
        if not live:
            break
        props = small.generate_sync([StepRequest(small.encode(r["ctx"]), derive_seed(seed, r["p"].id, r["g"], t, SMALL))
                                     for r in live], cfg.small_params())
        kept = props
        if escalate_all:
            kept = large.generate_sync([StepRequest(large.encode(r["ctx"]), derive_seed(seed, r["p"].id, r["g"], t, LARGE))
                                        for r in live], cfg.large_params())
        for r, prop, res in zip(live, props, kept):
            r["out"].append((prop, res))
            if res.finish_reason == "eos":
                r["done"] = True
            elif not res.text.strip():
                r["empty"] += 1
                r["done"] = r["empty"] >= cfg.max_empty_steps
            else:
                r["empty"] = 0
                r["ctx"] += res.text
                r["done"] = has_final_answer(res.text)
    return [r["out"] for r in rows]


def test_keep_only_equals_srm_only_generation(engines, problems):
    small, large = engines
    trajs = rollout_sync(problems, small, large, srm_only(), CFG, group_size=2, seed=7)
    assert [(t.query_id, t.sample_idx) for t in trajs] == [(p.id, g) for p in problems for g in range(2)]
    for t, ref in zip(trajs, reference(problems, 2, 7, CFG, small, large, escalate_all=False)):
        assert [s.token_ids for s in t.steps] == [r.token_ids for _, r in ref]
        assert [s.text for s in t.steps] == [r.text for _, r in ref]
        for s in t.steps:
            assert (s.model, s.action, s.large_tokens, s.small_text) == (SMALL, KEEP, 0, None)
            assert s.small_tokens == len(s.token_ids)
        assert t.large_tokens == 0 and t.policy_id == "srm_only"


def test_escalate_all_equals_lrm_written_steps(engines, problems):
    small, large = engines
    trajs = rollout_sync(problems, small, large, lrm_only(), CFG, group_size=2, seed=3)
    for t, ref in zip(trajs, reference(problems, 2, 3, CFG, small, large, escalate_all=True)):
        assert len(t.steps) == len(ref)
        for s, (prop, res) in zip(t.steps, ref):
            assert (s.model, s.action) == (LARGE, ESCALATE)
            assert s.token_ids == res.token_ids and s.text == res.text  # in the large tokenizer's ids
            assert s.small_text == prop.text and s.small_tokens == prop.n_tokens  # discarded, counted
            assert s.large_tokens == res.n_tokens
            assert s.confidence == pytest.approx(float(np.exp(np.maximum(prop.logprobs, -30)).mean()), abs=1e-5)
        assert t.small_tokens > 0 and t.large_tokens > 0


def test_costs_add_up(engines, problems):
    small, large = engines
    s0, l0 = small.stats["tokens"], large.stats["tokens"]
    stats = {}
    trajs = rollout_sync(problems, small, large, RandomPolicy(0.4), CFG, group_size=3, seed=1, stats=stats)
    # every token an engine generated is in exactly one step's cost (discarded proposals included)
    assert sum(t.small_tokens for t in trajs) == small.stats["tokens"] - s0 == stats["small_tokens"]
    assert sum(t.large_tokens for t in trajs) == large.stats["tokens"] - l0 == stats["large_tokens"]
    n_esc = 0
    for t in trajs:
        assert t.small_tokens == sum(s.small_tokens for s in t.steps)
        assert t.large_tokens == sum(s.large_tokens for s in t.steps)
        for s in t.steps:
            if s.action == ESCALATE:
                n_esc += 1
                assert s.large_tokens == len(s.token_ids) > 0 and s.small_text is not None and s.small_tokens > 0
            else:
                assert s.large_tokens == 0 and s.small_tokens == len(s.token_ids)
        m = t.meta
        assert m["flops"] == pytest.approx(2 * (small.n_params * t.small_tokens + large.n_params * t.large_tokens))
        assert m["flops"] == pytest.approx(t.flops(small.n_params, large.n_params))
        assert (m["small_params"], m["large_params"]) == (small.n_params, large.n_params)
        assert 0.0 <= t.large_share <= 1.0
    assert 0 < n_esc < sum(len(t.steps) for t in trajs)


def test_samples_differ_by_seed_and_repeat_exactly(engines, problems):
    small, large = engines
    pol = RandomPolicy(0.3, seed=2)
    a = rollout_sync(problems[:3], small, large, pol, CFG, group_size=3, seed=11)
    b = rollout_sync(problems[:3], small, large, pol, CFG, group_size=3, seed=11)
    c = rollout_sync(problems[:3], small, large, pol, CFG, group_size=3, seed=12)

    def sig(t):
        return [(s.token_ids, s.action, s.small_text, s.features) for s in t.steps]

    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]  # exactly, features included
    assert sum(sig(x) != sig(y) for x, y in zip(a, c)) >= len(a) - 1
    for i in range(0, len(a), 3):  # the G samples of one query differ from each other
        group = [sig(t) for t in a[i:i + 3]]
        assert group[0] != group[1] and group[1] != group[2] and group[0] != group[2]


def test_features_policy_and_records(engines, problems):
    small, large = engines
    trajs = rollout_sync(problems, small, large, ConfidenceThreshold(0.3), CFG, group_size=2, seed=5)
    acts = []
    for t in trajs:
        assert t.meta["end_reason"] in END_REASONS
        assert t.correct is not None and t.meta["gold"] == [p for p in problems if p.id == t.query_id][0].answer
        for i, s in enumerate(t.steps):
            assert s.index == i and len(s.features) == len(LOGPROB_NAMES)
            assert s.confidence == pytest.approx(s.features[0])
            assert s.features[LOGPROB_NAMES.index("step_index")] == pytest.approx(i / CFG.max_steps)
            assert s.action == int(s.confidence < 0.3)  # the threshold policy saw the recorded confidence
            assert s.finish_reason in ("stop", "eos", "length")
            acts.append(s.action)
        kept = [s.text for s in t.steps if s.text.strip()]
        assert t.answer_text == "".join(kept)  # empty steps are recorded but never enter the context
        esc = [s for s in t.steps if s.action == ESCALATE]
        lt = sum(s.large_tokens for s in t.steps[:len(t.steps) - 1])
        if len(t.steps) > 1:  # context features of the last step: large tokens / escalations before it
            f = t.steps[-1].features
            assert f[LOGPROB_NAMES.index("large_tokens_so_far")] == pytest.approx(lt / 1000.0)
        assert t.n_escalations == len(esc)
    assert 0 < sum(acts) < len(acts)


def test_end_reasons(engines, problems):
    small, large = engines
    trajs = rollout_sync(problems, small, large, lrm_only(), CFG, group_size=4, seed=0)
    seen = set()
    for t in trajs:
        r = t.meta["end_reason"]
        seen.add(r)
        last = t.steps[-1]
        if r == "answer":
            assert has_final_answer(last.text)
        elif r == "eos":
            assert last.finish_reason == "eos"
        elif r == "max_steps":
            assert len(t.steps) == CFG.max_steps
        elif r == "empty_steps":
            assert not last.text.strip() and not t.steps[-2].text.strip()
    assert "answer" in seen  # the large synthetic LM writes "Answer:" lines
    cfg_end = dataclasses.replace(CFG, long_step="end", max_step_tokens=8)
    trajs = rollout_sync(problems[:2], small, large, srm_only(), cfg_end, group_size=4, seed=0)
    for t in trajs:
        lengths = [s.finish_reason == "length" and s.text.strip() != "" for s in t.steps]
        if any(lengths):
            assert lengths.index(True) == len(t.steps) - 1 and t.meta["end_reason"] == "long_step"
    assert any(t.meta["end_reason"] == "long_step" for t in trajs)
    cfg_ctx = dataclasses.replace(CFG, max_context_tokens=40)
    trajs = rollout_sync(problems[:2], small, large, srm_only(), cfg_ctx, group_size=2, seed=0)
    by_id = {p.id: p for p in problems}
    limit = cfg_ctx.max_context_tokens - cfg_ctx.max_step_tokens
    for t in trajs:  # every step came from a prefix within the limit; a "context" end is the first that is not
        prompt = default_prompt(by_id[t.query_id])
        kept = [s.text for s in t.steps if s.text.strip()]
        if kept:
            assert len(small.encode(prompt + "".join(kept[:-1]))) <= limit
        if t.meta["end_reason"] == "context":
            assert len(small.encode(prompt + "".join(kept))) > limit
    assert any(t.meta["end_reason"] == "context" for t in trajs)


def test_store_resume_skips_done_trajectories(engines, problems, tmp_path):
    import roro_jax.store as store_mod
    small, large = engines
    pol = CriticalFirst(2, drop=0.05)
    full = rollout_sync(problems, small, large, pol, CFG, group_size=2, seed=4)
    store = store_mod.TrajectoryStore(tmp_path / "trajs.jsonl")
    first = rollout_sync(problems[:2], small, large, pol, CFG, group_size=2, seed=4, store=store)
    assert len(first) == 4 and len(store) == 4
    stats = {}
    rest = rollout_sync(problems, small, large, pol, CFG, group_size=2, seed=4, store=store, stats=stats)
    assert stats["skipped"] == 4 and [(t.query_id, t.sample_idx) for t in rest] == \
        [(p.id, g) for p in problems[2:] for g in range(2)]
    stored = {t.traj_id: t.to_dict() for t in store.iter()}
    assert len(stored) == len(store) == 8  # no duplicate, no gap
    assert stored == {t.traj_id: t.to_dict() for t in full}  # resumed = uninterrupted


def test_toy_labels_and_meta(engines, problems):
    p = toy.make_problem([7, 3, 4], ["*", "+"])  # 7 * 3 = 21, 21 + 4 = 25, Answer: 25
    steps = [
        Step(0, "7 * 3 = 21\n\n", model=SMALL, action=KEEP),
        Step(1, "21 + 4 = 25\n\n", model=LARGE, action=ESCALATE, small_text="21 + 4 = 26\n\n"),
        Step(2, "\n\n", model=SMALL, action=KEEP),  # empty: not part of the solution
        Step(3, "Answer: 24", model=SMALL, action=KEEP),
    ]
    lab = toy.step_labels(p, steps)
    assert lab["first_wrong_step"] == 3 and lab["wrong_steps"] == [1, 3]
    steps[3] = Step(3, "Answer: 25", model=SMALL, action=KEEP)
    lab = toy.step_labels(p, steps)
    assert lab["first_wrong_step"] is None and lab["wrong_steps"] == [1] and lab["toy_correct"]
    small, large = engines
    (t,) = rollout_sync(problems[:1], small, large, srm_only(), CFG, seed=0, annotate=toy.trajectory_meta)
    assert t.meta["world"] == "toy" and "first_wrong_step" in t.meta and "wrong_steps" in t.meta
    assert t.meta["wrong_steps"] == toy.step_labels(problems[0], t.steps)["wrong_steps"]
    (plain,) = rollout_sync(problems[:1], small, large, srm_only(), CFG, seed=0)  # no hook: no world's labels
    assert not {"world", "first_wrong_step", "wrong_steps"} & set(plain.meta)
    assert plain.to_dict()["steps"] == t.to_dict()["steps"]
    assert t.correct is False  # the synthetic LM does not do arithmetic


def test_per_row_policy_fallback_and_errors(engines, problems):
    small, large = engines

    class Unflagged:  # no batch_invariant: called one row at a time with a per-row generator
        policy_id = "unflagged"

        def __init__(self):
            self.sizes = []

        def act(self, obs, rng):
            self.sizes.append(len(obs))
            return (rng.random(len(obs)) < 0.5).astype(np.int32), np.zeros(len(obs), np.float32)

    pol = Unflagged()
    a = rollout_sync(problems[:2], small, large, pol, CFG, group_size=2, seed=1)
    assert set(pol.sizes) == {1}
    b = rollout_sync(problems[:2], small, large, Unflagged(), CFG, group_size=2, seed=1)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]

    class Bad:
        policy_id = "bad"
        batch_invariant = True

        def act(self, obs, rng):
            return np.full(len(obs), 2), np.zeros(len(obs))

    with pytest.raises(ValueError, match="other than KEEP/ESCALATE"):
        rollout_sync(problems[:1], small, large, Bad(), CFG)
    with pytest.raises(ValueError, match="appears more than once"):
        rollout_sync([problems[0], problems[0]], small, large, srm_only(), CFG)
    with pytest.raises(ValueError, match="long_step"):
        RolloutConfig(long_step="split")

    async def inside():
        return rollout_sync(problems[:1], small, large, srm_only(), CFG)

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(inside())


def test_no_recompiles_and_overlap(engines, problems):
    small, large = engines
    stats = {}
    c_s, c_l = small.num_compiles, large.num_compiles
    trajs = asyncio.run(rollout(problems, small, large, RandomPolicy(0.3), CFG, group_size=4, seed=9, stats=stats))
    assert (small.num_compiles, large.num_compiles) == (c_s, c_l) == (1, 1)
    # 16 trajectories: the decision batcher decided many rows per call, not one at a time
    d = stats["decider"]
    assert d["rows"] == sum(len(t.steps) for t in trajs)
    assert d["batches"] < d["rows"] / 2
    assert ConstantPolicy(KEEP).policy_id == "srm_only"


def test_row_results_do_not_depend_on_how_many_rows_arrive_together():
    """The Flax engines run in worker threads, so which proposals are decided together depends on timing;
    a row's features and router probability must be bit-identical however many rows share its batch."""
    from roro_jax.config import load_config
    from roro_jax.engines.base import StepResult
    from roro_jax.rl.trainer import RouterLearner
    from roro_jax.rollout import _Decider, _Row
    from roro_jax.router.features import get_family
    from roro_jax.router.policies import RouterPolicy

    cfg = RolloutConfig(max_steps=6, max_step_tokens=16, logprobs=5)
    rng = np.random.default_rng(0)

    def row(i):
        m = int(rng.integers(1, 16))
        lp = -rng.random(m).astype(np.float32)
        top = np.sort(-rng.random((m, 5)).astype(np.float32), axis=1)[:, ::-1]
        return _Row(StepResult(list(range(m)), "x", "stop", lp, top), i % 6, i, i % 3, np.zeros(0), "q", i, i)

    rows = [row(i) for i in range(150)]
    dec = _Decider(ConstantPolicy(KEEP, policy_id="k"), cfg)
    together = dec.featurize(rows)
    alone = np.concatenate([dec.featurize([r]) for r in rows[:20]] + [dec.featurize(rows[20:37])])
    np.testing.assert_array_equal(together[:37], alone)

    learner = RouterLearner(load_config(None, ["router.hidden=[32,32]"]), get_family("logprob").dim)
    policy = RouterPolicy(learner)
    p_all = policy.escalate_prob(together)
    p_parts = np.concatenate([policy.escalate_prob(together[i:i + n]) for i, n in ((0, 1), (1, 5), (6, 90), (96, 54))])
    np.testing.assert_array_equal(p_all, p_parts)
