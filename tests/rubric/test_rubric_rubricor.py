"""Rubricor: reward on constructed pairs, teacher rubrics, SFT and the GRPO update direction."""

import math

import numpy as np
import pytest
from rubric_testkit import TINY, make_traj

from roro_jax.rubric.format import RubricLimits, format_rubric, parse_rubric
from roro_jax.rubric.judge import Judge, JudgeConfig, pair_correct
from roro_jax.rubric.lm import LMSpec
from roro_jax.rubric.rubricor import Rubricor, RubricorConfig, rubric_reward
from roro_jax.rubric.serialize import SerializeConfig
from roro_jax.rubric.teacher import TEMPLATES, drop_step, rule_scores, teacher_rubric
from roro_jax.types import PreferencePair

OK = parse_rubric("1. [w=0.5] Escalates step 3.\n2. [w=0.5] Keeps conf>0.9 steps.\n", "q")
BAD = parse_rubric("Escalate when unsure.", "q")


def test_reward_on_constructed_pairs():
    sp = [0.9, 0.6, 0.5, 0.2]
    sr = [0.1, 0.7, 0.5, 0.1]  # right, wrong, tie, right
    assert rubric_reward(OK, sp, sr) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert rubric_reward(OK, sp, sr, kind="margin") == pytest.approx(np.mean(np.subtract(sp, sr)))
    assert rubric_reward(BAD, sp, sr) == -1.5
    # malformed is below every attainable reward
    assert rubric_reward(BAD, sp, sr) < rubric_reward(OK, [0.0] * 4, [1.0] * 4)
    assert rubric_reward(BAD, sp, sr, kind="margin") < rubric_reward(OK, [0.0], [1.0], kind="margin")
    n = len(OK.rubric.raw)
    assert rubric_reward(OK, [1.0], [0.0], target_chars=n - 10, length_penalty=0.01) == pytest.approx(0.9)
    assert rubric_reward(OK, [1.0], [0.0], target_chars=0, length_penalty=1.0) == 0.0  # floored, still > malformed
    with pytest.raises(ValueError):
        rubric_reward(BAD, sp, sr, kind="margin", malformed_reward=-1.0)
    assert math.isnan(rubric_reward(OK, [], []))
    with pytest.raises(KeyError):
        rubric_reward(OK, sp, sr, kind="nope")


def test_reward_matches_judge_reading_the_rubric(toy_pairs, tiny_judge_cfg):
    trajs, pairs, queries = toy_pairs
    by_id = {t.traj_id: t for t in trajs}
    j = Judge(tiny_judge_cfg, SerializeConfig(), max_criteria=4)
    rubrics = {p.query_id: OK.rubric for p in pairs}
    j.train_steps(pairs[:2], by_id, queries, rubrics, steps=3, rng=np.random.default_rng(0))
    correct, sp, sr = pair_correct(j, pairs, by_id, queries, rubrics)
    # the reward of a well-formed rubric is the Judge's pairwise accuracy on the query's pairs (ties 1/2)
    assert rubric_reward(OK, sp, sr) == pytest.approx(np.mean((sp > sr) + 0.5 * (sp == sr)))
    assert rubric_reward(OK, sp, sr) >= correct.mean()


def test_teacher_checks_and_weights():
    probe = make_traj("q", "probe", [0.95, 0.9, 0.3, 0.92, 0.9])
    assert drop_step(probe) == 2
    good = make_traj("q", "good", [0.95, 0.9, 0.3, 0.92, 0.9], esc=(2,))
    bad = make_traj("q", "bad", [0.95, 0.9, 0.3, 0.92, 0.9], esc=(0,))
    assert TEMPLATES["escalate_drop"].check(good, 2) == 1.0 and TEMPLATES["escalate_drop"].check(bad, 2) == 0.0
    assert TEMPLATES["keep_confident"].check(good, 0.9) == 1.0 and TEMPLATES["keep_confident"].check(bad, 0.9) == 0.5
    assert TEMPLATES["recover"].check(good, 1) == 1.0
    pairs = [PreferencePair("q", good.traj_id, bad.traj_id, "process", 0.5, "")]
    rub, spec = teacher_rubric("q", probe, pairs, {good.traj_id: good, bad.traj_id: bad}, max_criteria=3)
    names = [n for n, _ in spec]
    assert "escalate_drop" in names and "small_final" not in names  # only criteria that separate the pair
    assert sum(c.weight for c in rub.criteria) == pytest.approx(1.0)
    assert parse_rubric(format_rubric(rub), "q").ok
    s = rule_scores([good, bad], spec, [c.weight for c in rub.criteria])
    assert s[0] > s[1]
    # no pairs: the default set, equal weights
    rub0, spec0 = teacher_rubric("q", probe)
    assert [n for n, _ in spec0] == ["escalate_drop", "keep_confident", "budget"]


SMALL_LM = LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=128)
TARGET = "1. [w=1] Esc step 3.\n"


@pytest.fixture(scope="module")
def sft_rubricor():
    cfg = RubricorConfig(model=SMALL_LM, sft_lr=2e-2, sft_batch=2, max_new_tokens=24, group_size=2, lr=3e-3,
                         grpo_epochs=2)
    r = Rubricor(cfg, SerializeConfig(), RubricLimits(), seed=0)
    prompts = [r.prompt_ids("2+2?", "n3 939"), r.prompt_ids("3+3?", "n3 939")]
    losses = r.sft(prompts, [TARGET, TARGET], steps=30, rng=np.random.default_rng(0))
    return r, prompts, losses


def test_sft_learns_the_format(sft_rubricor):
    r, prompts, losses = sft_rubricor
    assert losses[-1] < 0.2 * losses[0]
    written = r.write(prompts[:1], ["q"])[0]
    assert written.ok and written.rubric.criteria[0].text == "Esc step 3."


def test_grpo_moves_toward_reward(sft_rubricor):
    r, prompts, _ = sft_rubricor
    # of two completions of the same prompt, the rewarded one gains log-probability (and vice versa)
    a = r.tokenizer.encode("1. [w=1] Esc step 3.\n", add_special_tokens=False) + [r.eos_id]
    b = r.tokenizer.encode("1. [w=1] Keep all.\n", add_special_tokens=False) + [r.eos_id]
    p = prompts[0]

    def gap():
        tokens, attn, mask = r._pack([p, p], [a, b])
        lp = np.asarray(r._logp(r.state.params, r.frozen, tokens, attn)) * mask
        return lp[0].sum() - lp[1].sum()

    g0 = gap()
    snap = r.snapshot()
    m = r.grpo_update([p, p], [a, b], [0.0, 1.0])
    assert gap() < g0 and m["adv_abs"] > 0
    r.restore(snap)
    assert gap() == g0
    r.grpo_update([p, p], [a, b], [1.0, 0.0])
    assert gap() > g0


@pytest.mark.parametrize("mode", ["shard_map", "pmap", "jit_sharded"])
def test_sft_and_grpo_on_eight_devices_match_one(mode):
    """The Rubricor's SFT and GRPO steps are the generic update: ``parallel=<mode>`` on 8 simulated devices
    reaches the parameters of one device (8 sequences: one per device), up to float reassociation (Adam's
    normalisation makes a near-zero gradient's reassociation error visible, hence 1e-4 after 4 steps)."""
    import jax

    assert jax.device_count() == 8, "tests run with 8 simulated CPU devices (see tests/conftest.py)"

    def run(parallel):
        cfg = RubricorConfig(model=SMALL_LM, sft_lr=2e-2, sft_batch=8, max_new_tokens=8, group_size=2, lr=3e-3,
                             grpo_epochs=2, parallel=parallel)
        r = Rubricor(cfg, SerializeConfig(), RubricLimits(), seed=0)
        prompts = [r.prompt_ids(f"{q}+{q}?", "n3 939") for q in range(8)]
        losses = r.sft(prompts, [TARGET] * 8, steps=2, rng=np.random.default_rng(0))
        comp = [r.tokenizer.encode(t, add_special_tokens=False) + [r.eos_id]
                for t in ("1. [w=1] Esc step 3.\n", "1. [w=1] Keep all.\n") * 4]
        m = r.grpo_update(prompts, comp, [0.0, 1.0, 1.0, 0.0, 0.5, 0.2, 0.0, 1.0])
        return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(r.state.params))], losses, m

    p1, l1, m1 = run("single")
    p8, l8, m8 = run(mode)
    np.testing.assert_allclose(l1, l8, atol=1e-5)
    np.testing.assert_allclose(m1["loss"], m8["loss"], atol=1e-5)
    assert m1["adv_abs"] > 0
    for a, b in zip(p1, p8):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
