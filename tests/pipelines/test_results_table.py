"""``pipelines.results_table``: the headline tables (mean ± std over seeds of each method's best point within
the budget and of its curve metrics), from report summaries written per seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.results_table import build_table, main, method_rows


def summary(points: dict[str, list[tuple[float, float]]], curves: dict[str, dict], srm=0.6, lrm=0.9) -> dict:
    """A report summary (layout of ``roro_jax.eval.report.summarize``): points are (share, accuracy)."""
    methods = []
    for m, pts in points.items():
        c = {k: {"estimate": curves[m].get(k), "lo": None, "hi": None}
             for k in ("max_pgr", "cpt_50", "cpt_80", "cpt_95", "delta_ibc", "auc")}
        methods.append({"method": m, "is_estimate": m == "est", "curve": c,
                        "points": [{"large_share": s, "accuracy": a} for s, a in pts]})
    return {"srm": {"method": "SRM-only", "accuracy": srm}, "lrm": {"method": "LRM-only", "accuracy": lrm},
            "methods": methods}


SEEDS = [
    summary({"A": [(0.1, 0.70), (0.25, 0.80), (0.5, 0.90)], "est": [(0.2, 0.8), (0.1, 0.8)]},
            {"A": {"cpt_50": 0.1, "cpt_80": 0.25, "delta_ibc": 1.5, "auc": 0.80}, "est": {"auc": 0.7}}),
    summary({"A": [(0.2, 0.75), (0.35, 0.85)], "est": [(0.3, 0.7)]},
            {"A": {"cpt_50": None, "cpt_80": 0.35, "delta_ibc": 0.5, "auc": 0.78}, "est": {"auc": 0.72}}),
    summary({"A": [(0.31, 0.90)], "est": [(0.3 + 1e-13, 0.6)]},
            {"A": {"cpt_50": 0.2, "cpt_80": 0.31, "delta_ibc": 2.5, "auc": 0.82}, "est": {"auc": 0.74}}),
]


@pytest.fixture()
def runs(tmp_path):
    out = []
    for i, s in enumerate(SEEDS):
        d = tmp_path / f"run_seed{i}" / "report" / "heldout"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(s))
        out.append(tmp_path / f"run_seed{i}")
    return out


def cells(table: str, method: str) -> list[str]:
    (row,) = [ln for ln in table.splitlines() if ln.startswith(f"| {method} |")]
    return [c.strip() for c in row.strip("|").split("|")][1:]


def fmt(vals, missing=0, n=3):
    v = np.asarray(vals, float)
    s = f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if v.size > 1 else "")
    return s + (f" ({missing}/{n} n.r.)" if missing else "")


def test_best_point_within_budget_and_tie_break():
    rows = method_rows(SEEDS[0], 0.3)
    assert rows["A"]["acc"] == 0.80 and rows["A"]["share"] == 0.25  # 0.90 costs 0.5 > 0.3
    assert rows["est"]["acc"] == 0.8 and rows["est"]["share"] == 0.1  # equal accuracy: the cheaper point
    assert rows["SRM-only"] == {"acc": 0.6, "share": 0.0} and rows["LRM-only"] == {"acc": 0.9, "share": 1.0}
    assert np.isnan(method_rows(SEEDS[2], 0.3)["A"]["acc"])  # no point within the budget
    assert method_rows(SEEDS[2], 0.3)["est"]["acc"] == 0.6  # float noise at the budget edge is inside it
    assert method_rows(SEEDS[0], 0.6)["A"]["acc"] == 0.90


def test_table_is_mean_and_std_over_seeds_with_not_reached_counts(runs):
    table = build_table(runs, "heldout", 0.3)
    header = table.splitlines()[0]
    assert header == ("| method | accuracy (best point ≤30% share) | large share | CPT(50%) | CPT(80%) | CPT(95%) | ΔIBC "
                      "| AUC |")
    assert cells(table, "SRM-only") == ["0.600 ± 0.000", "0.000 ± 0.000", "—", "—", "—", "—", "—"]
    assert cells(table, "LRM-only")[:2] == ["0.900 ± 0.000", "1.000 ± 0.000"]
    a = cells(table, "A")
    assert a[0] == fmt([0.80, 0.75], missing=1) == "0.775 ± 0.035 (1/3 n.r.)"
    assert a[1] == fmt([0.25, 0.2], missing=1)
    assert a[2] == fmt([0.1, 0.2], missing=1)  # CPT(50%) not reached by seed 1
    assert a[3] == fmt([0.25, 0.35, 0.31])
    assert a[4] == "n.r."  # no seed reaches 95%
    assert a[5] == fmt([1.5, 0.5, 2.5]) and a[6] == fmt([0.80, 0.78, 0.82])
    e = cells(table, "est")
    assert e[0] == fmt([0.8, 0.7, 0.6]) and e[2:5] == ["n.r.", "n.r.", "n.r."] and e[5] == "—"
    assert table.rstrip().endswith("3 seeds (run_seed0, run_seed1, run_seed2), test set `heldout`.")


def test_single_seed_and_the_command_line(runs, tmp_path, capsys):
    one = build_table(runs[:1], "heldout")
    assert cells(one, "A")[0] == "0.800" and cells(one, "A")[2] == "0.100"  # no ± with one seed
    out = tmp_path / "t.md"
    printed = main([str(r) for r in runs] + ["--test", "heldout", "--budget", "0.6", "--out", str(out)])
    assert out.read_text() == printed and printed in capsys.readouterr().out
    assert cells(printed, "A")[0] == fmt([0.90, 0.85, 0.90])  # the budget moves the best point


def test_published_replay_tables_are_what_their_summaries_give():
    """RESULTS.md and the README hold exactly the tables that ``pipelines.results_table`` prints over the
    committed per-seed summaries (rerunning the command that wrote those summaries: ``make results-check``)."""
    from pipelines.results_check import check_tables, stored_runs

    assert all((r / "report" / "math500_heldout" / "summary.json").is_file() for r in stored_runs("replay"))
    assert check_tables("replay") == []
