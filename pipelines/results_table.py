"""Aggregate evaluation reports of several seeds into one markdown table (mean ± std over seeds).

    python -m pipelines.results_table runs/replay_seed0 runs/replay_seed1 runs/replay_seed2 \
        --test math500_heldout [--out table.md]
    python -m pipelines.results_table runs/toy_seed0 runs/toy_seed1 runs/toy_seed2   # roro demo outputs

Reads ``<run>/report/<test>/summary.json`` (``<run>/report/summary.json`` without ``--test``, as the toy
demo writes it; both by ``roro_jax.eval.report.write_report``) and, per
method, reports: accuracy and large-model token share of the method's best point at a share of at most
``--budget`` (default 0.3; single-point methods: that point), CPT(50/80/95) (least share reaching that
PGR; "n.r." counts are shown when a seed never reaches it), mean ΔIBC and AUC of its curve.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def _val(x):
    if isinstance(x, dict):
        x = x.get("estimate")
    return float("nan") if x is None else float(x)


def method_rows(summary: dict, budget: float) -> dict[str, dict[str, float]]:
    rows = {}
    for key in ("srm", "lrm"):
        e = summary[key]
        rows[e["method"]] = {"acc": e["accuracy"], "share": 0.0 if key == "srm" else 1.0}
    for m in summary["methods"]:
        pts = [p for p in m["points"] if p["large_share"] <= budget + 1e-12]
        best = max(pts, key=lambda p: (p["accuracy"], -p["large_share"])) if pts else None
        c = m["curve"]
        rows[m["method"]] = {
            "acc": best["accuracy"] if best else float("nan"),
            "share": best["large_share"] if best else float("nan"),
            "cpt_50": _val(c["cpt_50"]), "cpt_80": _val(c["cpt_80"]), "cpt_95": _val(c["cpt_95"]),
            "delta_ibc": _val(c["delta_ibc"]), "auc": _val(c["auc"]),
            "estimate": bool(m.get("is_estimate")),
        }
    return rows


def _fmt(vals: list[float], nd=3, missing="n.r.") -> str:
    v = np.asarray(vals, float)
    ok = v[np.isfinite(v)]
    if ok.size == 0:
        return missing
    s = f"{ok.mean():.{nd}f}" + (f" ± {ok.std(ddof=1):.{nd}f}" if ok.size > 1 else "")
    miss = v.size - ok.size
    return s + (f" ({miss}/{v.size} n.r.)" if miss else "")


def build_table(runs: list[Path], test: str | None = None, budget: float = 0.3) -> str:
    per_seed = [method_rows(json.loads((r / "report" / (test or "") / "summary.json").read_text()), budget)
                for r in runs]
    methods = list(per_seed[0])
    cols = [("acc", f"accuracy (best point ≤{budget:.0%} share)"), ("share", "large share"), ("cpt_50", "CPT(50%)"),
            ("cpt_80", "CPT(80%)"), ("cpt_95", "CPT(95%)"), ("delta_ibc", "ΔIBC"), ("auc", "AUC")]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        cells = []
        for key, _ in cols:
            vals = [s[m].get(key, math.nan) for s in per_seed if m in s]
            if all(key not in s.get(m, {}) for s in per_seed):
                cells.append("—")
            else:
                cells.append(_fmt(vals, missing="n.r." if key.startswith("cpt") else "—"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    where = f", test set `{test}`" if test else ""
    return "\n".join(lines) + f"\n\n{len(runs)} seeds ({', '.join(r.name for r in runs)}){where}.\n"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--test", default=None, help="report sub-folder (replay: math500_heldout, aime2025)")
    p.add_argument("--budget", type=float, default=0.3)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    table = build_table(a.runs, a.test, a.budget)
    if a.out:
        a.out.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
