"""Streaming training over a trajectory store: regrouping, batches, group-by-group reading."""

from __future__ import annotations

import numpy as np
import pytest

from roro_jax.config import load_config
from roro_jax.rl.stream import iter_batches, iter_groups, reward_inputs
from roro_jax.types import ESCALATE, KEEP, Step, Trajectory

def traj(q, g, correct=True, actions=(KEEP, ESCALATE), F=3):
    steps = [Step(index=i, text="s\n\n", token_ids=[1, 2], action=a, action_logp=-0.5, features=[0.1 * i] * F,
                  small_tokens=2, large_tokens=2 * a, model="large" if a else "small") for i, a in enumerate(actions)]
    return Trajectory(query_id=q, sample_idx=g, policy_id="p", steps=steps, correct=correct)


def test_iter_groups_regroups_interleaved_samples_and_reports_open_groups():
    stream = [traj("a", 0), traj("b", 1), traj("a", 1), traj("c", 0), traj("b", 0)]
    stats = {}
    groups = list(iter_groups(stream, 2, stats))
    assert [[(t.query_id, t.sample_idx) for t in g] for g in groups] == [[("a", 0), ("a", 1)], [("b", 0), ("b", 1)]]
    assert stats == {"groups": 2, "dropped_groups": 1, "dropped_trajectories": 1, "max_open": 2}


def test_iter_batches_pads_scores_and_normalises_per_group():
    cfg = load_config(None, ["grpo.group_size=2", "rollout.max_steps=4", "reward.weights.cost=0.5",
                             "grpo.adv_scale=group"])
    groups = [[traj("a", 0, True, (KEEP,)), traj("a", 1, False, (KEEP, ESCALATE))],
              [traj("b", 0, True, (ESCALATE,)), traj("b", 1, True, (KEEP,))],
              [traj("c", 0), traj("c", 1)]]  # the third group is a partial batch: dropped
    [(batch, info)] = list(iter_batches(iter(groups), 2, cfg, n_features=3))
    assert batch["features"].shape == (4, 4, 3) and batch["mask"].sum() == 5
    r = 1.0 * reward_inputs([t for g in groups[:2] for t in g])["correct"] - 0.5 * np.array([0, 0.5, 1, 0])
    assert info["reward"] == pytest.approx(r.mean())
    assert np.all(np.sign(batch["advantages"]) == [1, -1, -1, 1])  # each sample vs its own group
    np.testing.assert_allclose(batch["advantages"].reshape(2, 2).sum(1), 0, atol=1e-6)


def test_a_store_is_trained_on_group_by_group(tmp_path):
    """Training reads the store as a stream: a store written group by group is regrouped with at most one
    group open at a time, so what is held does not grow with the store. (Peak memory itself is a
    measurement, not a unit test: ``python benchmarks/memory.py --sizes 10000 100000 --json``, figures in
    benchmarks/RESULTS.md.)"""
    from roro_jax.store import TrajectoryStore

    store = TrajectoryStore(tmp_path / "s.jsonl")
    assert store.add_many(traj(f"q{q:03d}", g) for q in range(100) for g in range(4)) == 400
    stats = {}
    groups = iter_groups(store.iter(), 4, stats)
    first = next(groups)
    assert [(t.query_id, t.sample_idx) for t in first] == [("q000", g) for g in range(4)]
    assert len(list(groups)) == 99 and stats["groups"] == 100 and stats["max_open"] == 1
    assert stats["dropped_groups"] == 0
