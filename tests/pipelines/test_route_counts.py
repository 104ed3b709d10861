"""``pipelines.route_counts``: lucky answers and repairs counted from the toy worlds' step labels."""

import pytest

from pipelines.route_counts import main, route_counts
from roro_jax.store import TrajectoryStore
from roro_jax.types import ESCALATE as E, KEEP as K, Step, Trajectory


def traj(q, actions, wrong, correct, i=0):
    return Trajectory(query_id=q, sample_idx=i, policy_id="p", correct=correct, meta={"wrong_steps": wrong},
                      steps=[Step(index=j, text=f"s{j}", action=a) for j, a in enumerate(actions)])


ROUTES = [traj("a", [K, K, E], [1], True),    # kept wrong step 1, escalated after it, right: lucky + repaired
          traj("b", [K, K, E], [1], False),   # the same, wrong
          traj("c", [K, E, K], [1], True),    # the wrong step escalated: not kept
          traj("d", [K, K, K], [0], True),    # kept a wrong step, right without an escalation: lucky
          traj("e", [K, K, K], [], False)]


def test_counts(tmp_path):
    assert route_counts(ROUTES) == {"routes": 5, "correct": 3, "kept_wrong": 3, "lucky": 2,
                                    "escalated_after": 2, "repaired": 1}
    path = tmp_path / "t.jsonl"
    TrajectoryStore(path).add_many(ROUTES)
    assert main([str(path), "--json"]) == route_counts(ROUTES)
    with pytest.raises(SystemExit):  # a missing store is an error, not zero routes
        main([str(tmp_path / "nope.jsonl")])


def test_routes_without_step_labels_are_an_error():
    plain = Trajectory(query_id="a", sample_idx=0, policy_id="p", steps=[Step(index=0, text="x")], correct=True)
    with pytest.raises(ValueError, match="no step labels"):
        route_counts([plain])
