"""The process-reward study command end to end (``--quick``), and its pure pieces."""

import json

import numpy as np
import pytest

from pipelines import study as S


def test_acc_at_budget_interpolates_along_the_front():
    costs = np.array([[0.2, 0.5, 0.9]])
    accs = np.array([[0.8, 0.9, 0.6]])
    # SRM point (0, 0.6): budget 0.1 lies half way to (0.2, 0.8) -> 0.7; 0.35 half way (0.2,0.8)->(0.5,0.9)
    np.testing.assert_allclose(S.acc_at_budget(costs, accs, 0.6, 0.1), [0.7])
    np.testing.assert_allclose(S.acc_at_budget(costs, accs, 0.6, 0.35), [0.85])
    np.testing.assert_allclose(S.acc_at_budget(costs, accs, 0.6, 0.95), [0.9])  # a dominated point never helps
    np.testing.assert_allclose(S.acc_at_budget(costs, accs, 0.6, 0.0), [0.6])


def test_bad_world_and_arms_are_errors():
    with pytest.raises(ValueError, match="not a toy world"):
        S.run_study(S.StudyOptions(world="nope"))
    with pytest.raises(ValueError, match="must include 'outcome'"):
        S.run_study(S.StudyOptions(arms=["roro"]))


def test_study_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "study"
    summary = S.main(["--world", "control", "--seeds", "0", "--quick", "--out", str(out)])
    for f in ("summary.json", "summary.md", "study.png", "tuning.json", "seed0/result.json",
              "seed0/rubric/results.json", "seed0/pairs.jsonl"):
        assert (out / f).exists(), f
    data = json.loads((out / "summary.json").read_text())
    assert set(data["arms"]) == {"outcome", "roro", "no_rubric", "oracle", "threshold"}
    for arm in data["arms"]:
        for key in ("auc", "cpt_80", "acc_at_0.1", "acc_at_0.2", "acc_at_0.3"):
            assert key in data["table"][arm]
        (row,) = data["per_seed"][arm]
        assert 0.0 <= row["auc"] <= 1.0 and len(row["points"]) >= 1
    assert set(data["paired_bootstrap"]) >= {"roro-outcome", "oracle-outcome"}
    d = data["paired_bootstrap"]["oracle-outcome"]["auc"]
    assert d["lo"] <= d["diff"] <= d["hi"] or not np.isfinite(d["lo"])
    # every router of every arm was evaluated on the same test problems, once
    res = json.loads((out / "seed0" / "result.json").read_text())
    n = len(res["test_ids"])
    assert n == 24 and all(len(v["correct"]) == n for v in res["final"].values())
    assert {r["arm"] for r in res["routers"]} == {"outcome", "roro", "no_rubric", "oracle"}
    assert sorted(data["learning_curves"]["outcome"]) == ["2", "4"]
    # the toy worlds' step labels give every trained arm's route behaviour, per λ_c
    assert set(data["route_behaviour"]) == {"outcome", "roro", "no_rubric", "oracle"}
    for rows in data["route_behaviour"].values():
        assert len(rows) == len(data["options"]["lambda_c"])
        assert all(0.0 <= late <= kept <= 1.0 for kept, late in rows)
    assert "keep a wrong small step" in (out / "summary.md").read_text()
    assert summary["world"] == "control"
    # a rerun reuses the finished seed and the tuning
    again = S.main(["--world", "control", "--seeds", "0", "--quick", "--out", str(out)])
    assert again["table"] == summary["table"]


def test_outcomes_count_kept_wrong_steps_and_late_escalations():
    from roro_jax.types import ESCALATE, KEEP, Step, Trajectory

    def traj(q, i, actions, wrong, correct):
        steps = [Step(index=j, text=f"s{j}", action=a, small_tokens=3, large_tokens=3 * a)
                 for j, a in enumerate(actions)]
        return Trajectory(query_id=q, sample_idx=i, policy_id="p", steps=steps, correct=correct,
                          meta={"wrong_steps": wrong})

    K, E = KEEP, ESCALATE
    out = S.outcomes([traj("a", 0, [K, K, E], [1], True),   # kept wrong step 1, escalated after it
                      traj("a", 1, [K, E, K], [1], False),  # its wrong step escalated: not kept
                      traj("b", 0, [E, K, K], [2], False),  # kept wrong step 2, nothing after it escalated
                      traj("c", 0, [K, K, K], [], True)])
    assert out["correct"] == [0.5, 0.0, 1.0]
    assert out["kept_wrong"] == [0.5, 1.0, 0.0] and out["late_escalation"] == [0.5, 0.0, 0.0]
    # worlds without step labels: only the three cost/outcome lists
    plain = S.outcomes([Trajectory(query_id="a", sample_idx=0, policy_id="p", steps=[Step(index=0, text="x")],
                                   correct=True)])
    assert set(plain) == {"correct", "large", "total"}


def test_no_judge_arm_skips_the_rubric_stage(tmp_path):
    """Outcome and oracle read no Judge: the explored problems come back and nothing is collected."""
    from roro_jax.config import load_config

    base = load_config(S.CONFIG, list(S.QUICK_CONFIG))
    opts = S.quick_options(S.StudyOptions(world="lucky", arms=["outcome", "oracle"]))
    cfg = S.seed_config(base, opts, 0, tmp_path)
    explore, res, objects, queries = S.rubric_objects(cfg, None, tmp_path, judges=False)
    assert res is None and objects == {} and len(explore) == opts.explore == len(queries)
    assert not any(tmp_path.iterdir())  # no exploration store, no pairs, no rubric folder
    assert S._rubric_brief(None) == {}


def test_threshold_residuals_separate_a_shifted_point_from_a_better_one():
    """A router point on the threshold's front (another operating point) has residual 0; one above it by
    0.05 has +0.05; the front includes the SRM-only point and mixes of two threshold points."""
    th = {"seed": 0, "points": [[0.2, 0.6], [0.6, 1.0]]}
    summary = {"arms": ["outcome", "roro", "threshold"], "endpoints": {"srm": {"mean": 0.2}},
               "per_seed": {"threshold": [th, th],
                            "outcome": [{"points": [[0.4, 0.8], [0.1, 0.4]]}, {"points": [[0.4, 0.8], [0.1, 0.4]]}],
                            "roro": [{"points": [[0.4, 0.85], [0.1, 0.3]]}, {"points": [[0.4, 0.75], [0.1, 0.5]]}]}}
    res = S.threshold_residuals(summary)
    np.testing.assert_allclose(res["outcome"], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(res["roro"], [0.0, 0.0], atol=1e-12)  # +0.05 and -0.05 over the two seeds
    summary["per_seed"]["roro"][1] = {"points": [[0.4, 0.85], [0.1, 0.5]]}
    np.testing.assert_allclose(S.threshold_residuals(summary)["roro"], [0.05, 0.0], atol=1e-12)


def test_study_routers_carry_the_reference_when_beta_is_set():
    """Every router of the lock-step study gets the frozen initial router as its KL reference (beta > 0)."""
    import jax
    import numpy as np

    from pipelines.study import StudyOptions, make_routers
    from roro_jax.config import load_config
    from roro_jax.rl.trainer import RouterLearner
    from roro_jax.router.features import get_family

    for beta, has_ref in ((0.0, False), (0.1, True)):
        cfg = load_config(None, [f"grpo.beta={beta}", "router.hidden=[8]"])
        learner = RouterLearner(cfg, get_family(cfg.router.features).dim)
        routers = make_routers(["outcome"], StudyOptions(lambda_c=[0.1, 1.0]), {}, {}, {}, learner)
        assert len(routers) == 2
        for r in routers:
            assert (r.state.ref_params is not None) == has_ref
            if has_ref:
                jax.tree.map(np.testing.assert_array_equal, jax.device_get(r.state.ref_params),
                             jax.device_get(learner.params))
