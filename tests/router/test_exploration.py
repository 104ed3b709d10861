"""Exploratory policies: critical-first windows, anti-critical controls, the suite."""

from __future__ import annotations

import numpy as np
import pytest

from roro_jax.router.baselines import RandomPolicy
from roro_jax.router.exploration import (AntiCritical, CriticalFirst, ExplorationConfig, exploration_suite,
                                         first_drop)
from roro_jax.router.policies import StepObservation


def run_sequence(policy, confs, qid="q", g=0):
    """Decide a trajectory step by step as the rollout does (history = earlier proposals' confidences)."""
    acts = []
    for t, c in enumerate(confs):
        obs = StepObservation(features=np.zeros((1, 16), np.float32), confidence=np.array([c]),
                              step_index=np.array([t]), conf_history=[np.asarray(confs[:t], np.float64)],
                              query_ids=[qid], sample_idx=np.array([g]))
        obs.row_seeds = np.array([1000 + t])
        a, lp = policy.act(obs, np.random.default_rng(0))
        assert lp.shape == (1,)
        acts.append(int(a[0]))
    return acts


def test_first_drop():
    assert first_drop([0.9, 0.92, 0.88], 0.5, drop=0.2) == 3
    assert first_drop([0.9, 0.5, 0.9], 0.4, drop=0.2) == 1  # the first one counts
    assert first_drop([0.9, 0.85], 0.8, drop=0.2) is None
    assert first_drop([], 0.1, drop=0.2) is None  # nothing to compare with at step 0
    assert first_drop([0.9, 0.9], 0.5, drop=0.2, min_history=3) is None


CONFS = [0.9, 0.92, 0.88, 0.5, 0.45, 0.9, 0.3, 0.9]  # first sharp drop at step 3


@pytest.mark.parametrize("w", [1, 2, 3])
def test_critical_first_escalates_window_at_first_drop(w):
    acts = run_sequence(CriticalFirst(3, drop=0.2, window=w), CONFS)
    expect = [0] * len(CONFS)
    for t in range(3, 3 + w):
        expect[t] = 1
    assert acts == expect  # the later drop at step 6 is not escalated: only the first one


def test_critical_first_random_window_is_seeded_and_in_range():
    pol = CriticalFirst(3, drop=0.2, seed=5)
    lengths = set()
    for g in range(40):
        acts = run_sequence(pol, CONFS, qid="q1", g=g)
        w = sum(acts)
        assert 1 <= w <= 3 and acts[3] == 1 and acts[:3] == [0, 0, 0]
        assert acts == run_sequence(pol, CONFS, qid="q1", g=g)  # reproducible
        assert w == pol.window_length("q1", g)
        lengths.add(w)
    assert lengths == {1, 2, 3}
    assert run_sequence(pol, [0.9, 0.9, 0.9, 0.9]) == [0, 0, 0, 0]  # no drop, no escalation


def test_critical_first_batch_invariant():
    pol = CriticalFirst(2, drop=0.2)
    hist = [np.array(CONFS[:t]) for t in range(len(CONFS))]
    obs = StepObservation(features=np.zeros((len(CONFS), 16), np.float32), confidence=np.array(CONFS),
                          step_index=np.arange(len(CONFS)), conf_history=hist,
                          query_ids=["q"] * len(CONFS), sample_idx=np.zeros(len(CONFS), int))
    a, _ = pol.act(obs, np.random.default_rng(0))
    assert a.tolist() == run_sequence(pol, CONFS)


def test_anti_critical_escalates_most_confident_steps():
    confs = [0.5, 0.95, 0.3, 0.9, 0.99, 0.2]
    assert run_sequence(AntiCritical(2, threshold=0.85), confs) == [0, 1, 0, 1, 0, 0]
    assert run_sequence(AntiCritical(1, threshold=0.85), confs) == [0, 1, 0, 0, 0, 0]
    # never escalates a low-confidence step
    assert run_sequence(AntiCritical(5, threshold=0.85), [0.1, 0.2, 0.3]) == [0, 0, 0]


def test_exploration_suite():
    pols = exploration_suite(ExplorationConfig(random_rates=(0.2, 0.4), thresholds=(0.5,), critical_k=(1, 3),
                                               anti_k=(2,), seed=1))
    ids = [p.policy_id for p in pols]
    assert len(ids) == len(set(ids)) == 6
    assert all(getattr(p, "batch_invariant", False) for p in pols)
    assert isinstance(pols[0], RandomPolicy) and pols[0].seed == 1
    with pytest.raises(ValueError, match="duplicate"):
        exploration_suite(ExplorationConfig(random_rates=(0.2, 0.2)))
    with pytest.raises(ValueError):
        CriticalFirst(0)
