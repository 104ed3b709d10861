"""Fixtures for the rubric tests (helpers live in rubric_testkit.py)."""

import pytest
from rubric_testkit import TINY, make_traj

from roro_jax.rubric.judge import JudgeConfig
from roro_jax.types import PreferencePair


@pytest.fixture
def toy_pairs():
    """Four queries; preferred = escalates the low-confidence step, rejected = escalates a confident one."""
    trajs, pairs = [], []
    for q in range(4):
        confs = [0.95, 0.9, 0.2 + 0.05 * q, 0.9, 0.97]
        good = make_traj(f"q{q}", "good", confs, esc=(2,))
        bad = make_traj(f"q{q}", "bad", confs, esc=(0,))
        trajs += [good, bad]
        pairs.append(PreferencePair(f"q{q}", good.traj_id, bad.traj_id, "process", 0.5, "test"))
    queries = {f"q{q}": f"What is {q}+{q}?" for q in range(4)}
    return trajs, pairs, queries


@pytest.fixture
def tiny_judge_cfg():
    return JudgeConfig(model=TINY, batch_pairs=4, steps=2, lr=1e-2)
