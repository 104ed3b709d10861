"""Streaming training over a trajectory store: regrouping, batches, and flat peak memory in the store size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from roro_jax.config import load_config
from roro_jax.rl.stream import iter_batches, iter_groups, reward_inputs
from roro_jax.types import ESCALATE, KEEP, Step, Trajectory

ROOT = Path(__file__).resolve().parents[2]


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


def _memory_module():
    spec = importlib.util.spec_from_file_location("roro_bench_memory", ROOT / "benchmarks" / "memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_collect_and_train_peak_memory_flat_in_store_size(tmp_path):
    """Each phase in a fresh process at 10k and 30k trajectories: the peak RSS grows by little more than
    the store's key index (about 110 B a trajectory), not with the data (about 3.4 KB a trajectory on disk).
    (Below about 10k the allocator is still warming up; benchmarks/memory.py reports 10k and 100k.)"""
    mem = _memory_module()
    rows = {}
    for n in (10_000, 30_000):
        path = tmp_path / f"s{n}.jsonl"
        for phase in ("collect", "train"):
            rows[phase, n] = mem.measure(phase, n, path)
    small, big = rows["collect", 10_000], rows["collect", 30_000]
    assert big["stored"] == 30_000 and big["file_mb"] > 2.9 * small["file_mb"]
    assert rows["train", 30_000]["groups"] == 30_000 // mem.G and rows["train", 30_000]["max_open_groups"] <= 1
    data_mb = big["file_mb"] - small["file_mb"]  # what a non-streaming reader would hold at least
    for phase in ("collect", "train"):
        growth = rows[phase, 30_000]["peak_rss_mb"] - rows[phase, 10_000]["peak_rss_mb"]
        assert growth < min(15.0, 0.25 * data_mb), (phase, growth, data_mb, rows)
