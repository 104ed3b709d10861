"""Records, markdown report and PNG plot from synthetic per-point records."""

import json

import numpy as np
import pytest

from roro_jax.eval import EvalConfig, summarize, write_report
from roro_jax.eval.records import CurvePoint, point_from_trajectories, read_points, write_points
from roro_jax.types import ESCALATE, KEEP, Step, Trajectory

N = 200


def _records(seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"q{i:03d}" for i in range(N)]
    srm = (rng.uniform(size=N) < 0.35).astype(float)
    lrm = np.maximum(srm, rng.uniform(size=N) < 0.6)
    tot = rng.integers(100, 300, N).astype(float)
    pts = [CurvePoint.from_arrays("SRM-only", srm, np.zeros(N), tot, problem_ids=ids, role="srm", flops=1e9),
           CurvePoint.from_arrays("LRM-only", lrm, tot, tot, problem_ids=ids, role="lrm", flops=8e9)]
    for thr in (0.9, 0.2, 0.5, 0.7):               # unsorted sweep
        take = rng.uniform(size=N) < thr
        corr = np.where(take, lrm, srm)
        large = np.round(tot * thr * 0.4)
        perm = rng.permutation(N)                  # records may list problems in any order
        pts.append(CurvePoint.from_arrays("conf_thr", corr[perm], large[perm], tot[perm],
                                          problem_ids=[ids[i] for i in perm], param=thr,
                                          param_name="threshold", flops=2e9 + thr * 1e9))
    take = rng.uniform(size=N) < 0.8
    pts.append(CurvePoint.from_arrays("roro", np.where(take, lrm, srm), np.round(tot * 0.15), tot,
                                      problem_ids=ids, param=1.0, param_name="lambda_c"))
    # a replay-world method: estimated outcome, summary numbers only (no per-problem arrays -> no CIs)
    pts.append(CurvePoint(method="replay_thr", accuracy=0.55, large_share=0.3, n=N, param=0.5,
                          param_name="threshold", is_estimate=True,
                          estimate_note="last writer's final answer decides the outcome"))
    return pts


def test_point_validation():
    with pytest.raises(ValueError, match="role"):
        CurvePoint(method="a", accuracy=0.5, large_share=0.1, n=3, role="oracle")
    with pytest.raises(ValueError, match=r"large_share' must lie"):
        CurvePoint(method="a", accuracy=0.5, large_share=1.1, n=3)
    with pytest.raises(ValueError, match="mean of 'correct'"):
        CurvePoint(method="a", accuracy=0.9, large_share=0.5, n=2, correct=[1, 0], large_tokens=[1, 1],
                   total_tokens=[2, 2])
    with pytest.raises(ValueError, match="come together"):
        CurvePoint(method="a", accuracy=0.5, large_share=0.5, n=2, correct=[1, 0])
    with pytest.raises(ValueError, match="unknown field"):
        CurvePoint.from_dict({"method": "a", "accuracy": 0.5, "large_share": 0.1, "n": 1, "acc": 3})


def test_points_jsonl_roundtrip_and_errors(tmp_path):
    pts = _records()
    path = write_points(tmp_path / "points.jsonl", pts)
    back = read_points(path)
    assert [p.to_dict() for p in back] == [p.to_dict() for p in pts]
    bad = tmp_path / "bad.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["large_share"] = 2.0
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(row)]) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: .*large_share"):
        read_points(bad)
    bad.write_text(lines[0] + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        read_points(bad)


def test_point_from_trajectories():
    def traj(q, i, correct, actions, est=False):
        steps = [Step(index=j, text="s", token_ids=[1] * 10, model="large" if a else "small", action=a,
                      small_tokens=10, large_tokens=10 if a else 0) for j, a in enumerate(actions)]
        return Trajectory(query_id=q, sample_idx=i, policy_id="p", steps=steps, correct=correct,
                          correct_is_estimate=est)
    ts = [traj("a", 0, True, [KEEP, ESCALATE]), traj("a", 1, False, [KEEP, KEEP]),
          traj("b", 0, True, [ESCALATE, ESCALATE, KEEP, KEEP])]
    p = point_from_trajectories("pol", ts, param=0.3, param_name="rate", small_params=1.0, large_params=10.0)
    assert p.problem_ids == ["a", "b"] and p.correct == [0.5, 1.0] and p.accuracy == 0.75
    assert p.large_tokens == [10.0, 20.0] and p.total_tokens == [40.0, 40.0]
    assert p.large_share == pytest.approx(30 / 80)
    # flops per trajectory 2*(1*small + 10*large): a0 = 2*(20+100)=240, a1 = 40, b = 2*(40+200)=480
    assert p.flops == pytest.approx(((240 + 40) / 2 + 480) / 2)
    assert not p.is_estimate
    assert point_from_trajectories("x", [traj("a", 0, True, [KEEP], est=True)], estimate_note="n").is_estimate
    with pytest.raises(ValueError, match="ungraded"):
        point_from_trajectories("pol", [traj("a", 0, None, [KEEP])])


def test_summary_pairs_methods_and_front():
    pts = _records()
    s = summarize(pts, EvalConfig(n_boot=200))
    names = [m["method"] for m in s["methods"]]
    assert names == ["conf_thr", "roro", "replay_thr"]
    thr = s["methods"][0]
    assert [p["param"] for p in thr["points"]] == [0.2, 0.5, 0.7, 0.9]    # numeric params sorted
    assert thr["has_ci"] and not s["methods"][2]["has_ci"]
    for p in thr["points"]:
        assert p["accuracy_lo"] <= p["accuracy"] <= p["accuracy_hi"]
    # problem order differs between records: the aligned bootstrap must still pair per problem, so the
    # endpoint interval comes out identical for every method that has intervals
    assert s["srm"]["acc_lo"] is not None and s["srm"]["acc_lo"] < s["srm"]["accuracy"] < s["srm"]["acc_hi"]
    assert s["front"][0] == "SRM-only" and s["front"][-1] == "LRM-only"
    json.dumps(s, allow_nan=False)   # JSON-clean (NaN written as null)


def test_paired_intervals_do_not_depend_on_the_problem_order_of_a_record():
    """A method whose records list the problems in a shuffled order gets the same paired intervals as the
    same records in the endpoints' order: the bootstrap pairs each problem with itself across methods."""
    pts = _records()
    ids = pts[0].problem_ids

    def in_order(p):
        if not p.has_arrays or p.problem_ids == ids:
            return p
        pos = {q: i for i, q in enumerate(p.problem_ids)}
        idx = np.array([pos[q] for q in ids])
        return CurvePoint.from_arrays(p.method, np.asarray(p.correct)[idx], np.asarray(p.large_tokens)[idx],
                                      np.asarray(p.total_tokens)[idx], problem_ids=ids, param=p.param,
                                      param_name=p.param_name, flops=p.flops)

    ordered = [in_order(p) for p in pts]
    assert any(p.problem_ids != ids for p in pts if p.has_arrays)  # the fixture does shuffle
    shuffled_summary = summarize(pts, EvalConfig(n_boot=300))
    ordered_summary = summarize(ordered, EvalConfig(n_boot=300))
    thr_s, thr_o = shuffled_summary["methods"][0], ordered_summary["methods"][0]
    assert thr_s["method"] == thr_o["method"] == "conf_thr"
    assert json.dumps(thr_s, sort_keys=True) == json.dumps(thr_o, sort_keys=True)


def test_summary_errors():
    pts = _records()
    with pytest.raises(ValueError, match="role='srm'"):
        summarize([p for p in pts if p.role != "srm"], EvalConfig(n_boot=10))
    other = CurvePoint.from_arrays("odd", [1.0, 0.0], [1, 1], [2, 2], problem_ids=["x", "y"])
    with pytest.raises(ValueError, match="other problems"):
        summarize(pts + [other], EvalConfig(n_boot=10))
    assert summarize(pts + [other], EvalConfig(n_boot=0))["methods"][-1]["method"] == "odd"  # no CIs: fine


def test_write_report_markdown_and_png(tmp_path):
    pts = _records()
    paths = write_report(pts, tmp_path / "rep", EvalConfig(n_boot=200, title="Synthetic check"))
    md = paths["report"].read_text()
    assert md.startswith("# Synthetic check")
    assert "| method | points | max PGR | CPT(50%) | CPT(80%) | CPT(95%) | ΔIBC | AUC |" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| conf_thr |")]
    assert len(rows) == 1 and rows[0].count("[") >= 5                     # curve metrics with intervals
    assert any(ln.startswith("| replay_thr (estimate) |") and "[" not in ln for ln in md.splitlines())
    assert "## replay_thr (estimate)" in md and "last writer's final answer" in md and "| 0.5 | ≈0.550 |" in md
    assert "95% percentile bootstrap over problems (200 replicates, seed 0)" in md
    sec = md.split("## conf_thr")[1].split("##")[0]
    table = [ln for ln in sec.splitlines() if ln.startswith("| 0.")]
    assert [ln.split(" | ")[0] for ln in table] == ["| 0.2", "| 0.5", "| 0.7", "| 0.9"]
    assert "| threshold | accuracy | large share | FLOPs/problem | PGR | ΔIBC | front |" in sec
    assert "2.2e+09" in sec
    assert "![Synthetic check](curves.png)" in md
    # the summary and the points are re-readable, and the report from the file is the same
    assert json.loads(paths["summary"].read_text())["methods"][0]["method"] == "conf_thr"
    from roro_jax.eval import report_from_file
    again = report_from_file(paths["points"], tmp_path / "rep2", EvalConfig(n_boot=200, title="Synthetic check"))
    assert again["report"].read_text() == md

    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < len(png) < 2_000_000
    from matplotlib.image import imread
    img = imread(paths["plot"])
    assert img.shape[:2] == (900, 1350)                                      # 9 x 6 in at 150 dpi
    rgb = (img[..., :3] * 255).round().astype(int)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100                 # not blank
    tab_blue = np.array([31, 119, 180])                                      # first method's colour
    assert np.sum(np.all(np.abs(rgb - tab_blue) <= 3, axis=-1)) > 200


def test_report_details_found_by_mutation_testing():
    """The overall front (endpoints at shares 0 and 1), problem ids on one side only, number formatting,
    the estimate banner, the n.r. wording and the AUC wording."""
    from roro_jax.eval.metrics import pareto_front
    from roro_jax.eval.report import _ci, _f, render_markdown

    pts = _records()
    s = summarize(pts, EvalConfig(n_boot=50))
    srm, lrm = pts[0], pts[1]
    others = pts[2:]
    cost = [0.0, 1.0] + [p.large_share for p in others]
    acc = [srm.accuracy, lrm.accuracy] + [p.accuracy for p in others]
    assert s["front"] == [([srm, lrm] + others)[i].label for i in pareto_front(cost, acc)]
    no_ids = CurvePoint.from_arrays("odd", pts[2].correct, pts[2].large_tokens, pts[2].total_tokens)
    with pytest.raises(ValueError, match="problem_ids present on one of"):
        summarize(pts + [no_ids], EvalConfig(n_boot=10))
    assert (_f(None), _f(0.12345), _f(2.0, 1)) == ("—", "0.123", "2.0")
    assert _ci(0.5, None, 0.7) == "0.500 [—, 0.700]" and _ci(0.5, 0.4, None) == "0.500 [0.400, —]"
    md = render_markdown(s)
    for m in s["methods"]:  # the front marker sits exactly on the rows of the points on the overall front
        section = md.split(f"\n## {m['method']}")[1].split("\n## ")[0]
        for p in m["points"]:
            (row,) = [ln for ln in section.splitlines() if ln.startswith(f"| {p['param']} |")]
            assert row.rstrip().endswith("| ◆ |") == p["on_front"], row
    assert any(p["on_front"] for m in s["methods"] for p in m["points"])
    positional = [CurvePoint.from_arrays(p.method, p.correct, p.large_tokens, p.total_tokens, role=p.role,
                                         param=p.param, param_name=p.param_name)
                  for p in (pts[0], pts[1], pts[-2])]  # no problem ids anywhere: aligned by position
    assert summarize(positional, EvalConfig(n_boot=10))["methods"][0]["has_ci"]
    assert "more than 2.5% of replicates did not reach it" in md
    assert "estimated, not graded" in md and "of the method's points together with the SRM-only" in md
    graded = summarize([p for p in pts if not p.is_estimate], EvalConfig(n_boot=10, auc_with_endpoints=False))
    md2 = render_markdown(graded)
    assert "estimated, not graded" not in md2 and "extended flat to shares 0 and 1" in md2
