"""Judge: BT loss and gradient vs NumPy, encoding, scoring, jitted (data-parallel) update, snapshot/restore."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from rubric_testkit import make_traj

from roro_jax.rl.update import init_state
from roro_jax.rubric.format import parse_rubric
from roro_jax.rubric.judge import (Judge, bt_terms, make_judge_update, pair_correct, pad_inputs,
                                   score_trajectories, weighted_score)
from roro_jax.rubric.serialize import SerializeConfig
from roro_jax.rubric.teacher import teacher_rubric
from roro_jax.types import PreferencePair

RUB = parse_rubric("1. [w=0.7] Escalates step 3.\n2. [w=0.3] Keeps conf>0.9 steps.\n", "q").rubric


def np_bt(sp, sr, w, beta):
    d = beta * (sp - sr)
    loss = np.log1p(np.exp(-d)) * w
    den = w.sum()
    # d(loss_sum/den)/d sp = -beta * w * sigmoid(-d) / den
    g = -beta * w / (1 + np.exp(d)) / den
    return loss.sum() / den, g, -g


def test_bt_loss_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    sp, sr = rng.uniform(0, 1, 16), rng.uniform(0, 1, 16)
    w = rng.uniform(0.2, 2.0, 16)
    for beta in (1.0, 8.0):
        f = lambda a, b: (lambda t: t["loss_sum"] / t["loss_den"])(bt_terms(a, b, jnp.asarray(w), beta))
        loss, (gp, gr) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(sp), jnp.asarray(sr))
        ref, ref_gp, ref_gr = np_bt(sp, sr, w, beta)
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        np.testing.assert_allclose(gp, ref_gp, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(gr, ref_gr, rtol=1e-4, atol=1e-7)
    t = bt_terms(jnp.array([0.9, 0.2, 0.5]), jnp.array([0.1, 0.3, 0.5]), jnp.ones(3), 8.0)
    assert float(t["correct_sum"]) == 1.0  # ties are not correct


def test_weighted_score():
    p = jnp.array([[0.2, 0.8, 0.5], [1.0, 0.0, 0.3]])
    w = jnp.array([[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(weighted_score(p, w), [0.65, 0.0], rtol=1e-6)


def test_encoder_markers_and_padding_invariance(toy_pairs, tiny_judge_cfg):
    trajs, pairs, queries = toy_pairs
    j = Judge(tiny_judge_cfg, SerializeConfig(), max_criteria=4)
    ids, pos, w = j.encoder.encode(queries["q0"], RUB, trajs[0])
    text = j.tokenizer.decode(ids)
    assert text.startswith("<s>Q:What is 0+0?\nn5 e1 L30 S50 f9\ns9s9L2s9s9\nR:\nEscalates step 3. ?\n")
    assert [j.tokenizer.decode([ids[p]]) for p in pos] == ["?", "?"] and w == pytest.approx([0.7, 0.3])
    assert j.tokenizer.decode(ids[:pos[0] + 1]).endswith("Escalates step 3. ?")
    # scores do not depend on batch composition / padding
    items = [(queries[t.query_id], RUB, t) for t in trajs]
    alone = np.array([j.scores([it])[0] for it in items])
    np.testing.assert_allclose(j.scores(items), alone, rtol=1e-5, atol=1e-6)
    s, p = j.scores(items, return_probs=True)
    assert p.shape == (len(items), 4) and np.all((s >= 0) & (s <= 1))
    np.testing.assert_allclose(s, 0.7 * p[:, 0] + 0.3 * p[:, 1], rtol=1e-5)
    np.testing.assert_allclose(score_trajectories(j, queries["q0"], RUB, trajs[:2]), s[:2], rtol=1e-6)


def test_judge_learns_and_snapshot_restore_is_exact(toy_pairs, tiny_judge_cfg):
    trajs, pairs, queries = toy_pairs
    by_id = {t.traj_id: t for t in trajs}
    rubrics = {p.query_id: RUB for p in pairs}
    j = Judge(tiny_judge_cfg, SerializeConfig(), max_criteria=2)
    c0, sp0, sr0 = pair_correct(j, pairs, by_id, queries, rubrics)
    assert not c0.any()  # zero-initialised head: every score is 0.5, ties count as wrong
    snap = j.snapshot()
    hist = j.train_steps(pairs, by_id, queries, rubrics, steps=25, rng=np.random.default_rng(0))
    assert hist[-1]["loss"] < hist[0]["loss"]
    c1, _, _ = pair_correct(j, pairs, by_id, queries, rubrics)
    assert c1.all()
    j.restore(snap)
    for a, b in zip(jax.tree.leaves(snap), jax.tree.leaves(j.state)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    c2, sp2, _ = pair_correct(j, pairs, by_id, queries, rubrics)
    np.testing.assert_array_equal(sp2, sp0)


def test_no_rubric_judge(toy_pairs, tiny_judge_cfg):
    import dataclasses
    trajs, pairs, queries = toy_pairs
    j = Judge(dataclasses.replace(tiny_judge_cfg, use_rubric=False), SerializeConfig(), max_criteria=4)
    ids, pos, w = j.encoder.encode(queries["q0"], None, trajs[0])
    assert len(pos) == 1 and j.tokenizer.decode(ids).endswith("R:\nS ?")
    assert j.scores([(queries["q0"], None, trajs[0])]).shape == (1,)


def test_shard_map_update_matches_single_device(tiny_judge_cfg):
    if jax.device_count() < 4:
        pytest.skip("needs simulated devices (tests/conftest.py sets 8)")
    # distinct preferred/rejected inputs: near-identical ones make the gradient a float32 cancellation
    rng = np.random.default_rng(0)
    trajs, pairs = [], []
    for q in range(4):
        good = make_traj(f"q{q}", "good", list(rng.uniform(0, 1, 3 + q)), esc=(1,))
        bad = make_traj(f"q{q}", "bad", list(rng.uniform(0, 1, 12 - q)), esc=(0, 2, 3, 5))
        trajs += [good, bad]
        pairs.append(PreferencePair(f"q{q}", good.traj_id, bad.traj_id, "process", 0.5, "t"))
    queries = {f"q{q}": f"Query {q}" for q in range(4)}
    by_id = {t.traj_id: t for t in trajs}
    rubrics = {p.query_id: teacher_rubric(p.query_id, by_id[p.preferred])[0] for p in pairs}
    j = Judge(tiny_judge_cfg, SerializeConfig(), max_criteria=3)
    # a non-zero head, so that the backbone's gradients are not vanishingly small
    key = jax.random.PRNGKey(1)
    j.state = j.state.replace(params=jax.tree_util.tree_map_with_path(
        lambda path, x: jax.random.normal(key, x.shape) if "head_kernel" in jax.tree_util.keystr(path) else x,
        j.state.params))
    batch = j.pair_batch(pairs, by_id, queries, rubrics, pair_weight=[1.0, 2.0, 0.5, 1.5])
    tx = optax.sgd(1.0)  # plain SGD: the parameter change is the (psum-ed) gradient itself
    single = make_judge_update(j.graphdef, tx, 8.0, mode="single", donate=False)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = make_judge_update(j.graphdef, tx, 8.0, mode="shard_map", mesh=mesh, donate=False)
    start = init_state(j.snapshot().params, tx)
    s1, m1 = single(start, j.frozen, batch)
    s2, m2 = sharded(start, j.frozen, batch)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=3e-3)
    assert float(m1["grad_norm"]) > 0
    d1 = [np.asarray(a) - p0 for a, p0 in zip(jax.tree.leaves(s1.params), jax.tree.leaves(start.params))]
    d2 = [np.asarray(b) - p0 for b, p0 in zip(jax.tree.leaves(s2.params), jax.tree.leaves(start.params))]
    # same update up to float reassociation (relative error of the whole update vector)
    v1 = np.concatenate([x.ravel() for x in d1])
    v2 = np.concatenate([x.ravel() for x in d2])
    assert np.linalg.norm(v1) > 0
    assert np.linalg.norm(v1 - v2) / np.linalg.norm(v1) < 1e-4


def test_pad_inputs_shapes():
    arr = pad_inputs([([5, 6, 7], [2], [1.0]), ([5], [0], [1.0])], 3, len_multiple=4, rows=4)
    assert arr["ids"].shape == (4, 4) and arr["pos"].shape == (4, 3)
    assert arr["mask"].sum() == 4 and arr["w"][:, 1:].sum() == 0 and arr["w"][2:].sum() == 0


def test_kind_weights_balance_kinds():
    from roro_jax.rubric.judge import kind_weights

    ps = [PreferencePair("q", "a", "b", "cost")] * 6 + [PreferencePair("q", "a", "c", "outcome")] * 2
    np.testing.assert_array_equal(kind_weights(ps), np.ones(8))
    w = kind_weights(ps, "balanced")
    assert w.mean() == pytest.approx(1.0) and w[:6].sum() == pytest.approx(w[6:].sum())
    with pytest.raises(ValueError):
        kind_weights(ps, "nope")


@pytest.mark.parametrize("mode", ["shard_map", "pmap", "jit_sharded"])
def test_judge_trains_on_eight_devices_to_the_parameters_of_one(mode, tiny_judge_cfg):
    """``Judge.train_steps`` with ``parallel=<mode>`` on 8 simulated devices (Adam, 3 steps of 8 pairs) ends at
    the parameters the single-device Judge reaches, within 1e-5: the generic update of ``roro_jax.rl.update``."""
    import dataclasses

    assert jax.device_count() == 8, "tests run with 8 simulated CPU devices (see tests/conftest.py)"
    rng = np.random.default_rng(0)
    trajs, pairs = [], []
    for q in range(8):
        good = make_traj(f"q{q}", "good", list(rng.uniform(0, 1, 3 + q % 4)), esc=(1,))
        bad = make_traj(f"q{q}", "bad", list(rng.uniform(0, 1, 9 - q % 4)), esc=(0, 2))
        trajs += [good, bad]
        pairs.append(PreferencePair(f"q{q}", good.traj_id, bad.traj_id, "process", 0.5, "t"))
    by_id = {t.traj_id: t for t in trajs}
    queries = {f"q{q}": f"Query {q}" for q in range(8)}
    rubrics = {p.query_id: teacher_rubric(p.query_id, by_id[p.preferred])[0] for p in pairs}

    def train(parallel):
        cfg = dataclasses.replace(tiny_judge_cfg, batch_pairs=8, parallel=parallel)
        j = Judge(cfg, SerializeConfig(), max_criteria=3)
        hist = j.train_steps(pairs, by_id, queries, rubrics, steps=3, rng=np.random.default_rng(1))
        return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(j.state.params))], hist

    p1, h1 = train("single")
    p8, h8 = train(mode)
    p0 = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
        Judge(tiny_judge_cfg, SerializeConfig(), max_criteria=3).state.params))]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p0)) > 1e-3  # it trained
    for a, b in zip(p1, p8):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose([h["loss"] for h in h1], [h["loss"] for h in h8], atol=1e-5)
