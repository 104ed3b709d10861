"""Evaluation summary, markdown report and report folder.

``summarize(points, cfg)`` turns per-point records (:mod:`roro_jax.eval.records`) into a JSON-serialisable
summary: per method its points (accuracy, large-model share, FLOPs, PGR, ΔIBC, on-the-overall-front flag)
and its curve metrics (max PGR, CPT at ``cfg.xs``, ΔIBC, AUC), each with a bootstrap interval over problems
when the records carry per-problem arrays.  ``render_markdown(summary)`` writes the tables;
``write_report(points, out_dir, cfg)`` writes ``points.jsonl``, ``summary.json``, ``report.md`` and the PNG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .bootstrap import bootstrap_curve
from .config import EvalConfig
from .metrics import _delta_ibc_unchecked, curve_summary, pareto_front
from .records import CurvePoint, endpoints, group_by_method, read_points, write_points
from roro_jax.jsonio import atomic_write_json
from roro_jax.types import InputError

POINTS_FILE = "points.jsonl"


# ------------------------------------------------------------------------------------------- summary

def _aligned(p: CurvePoint, ref: CurvePoint) -> dict[str, np.ndarray]:
    """``p``'s per-problem arrays in ``ref``'s problem order (ValueError if the problem sets differ)."""
    arrs = {k: np.asarray(getattr(p, k), np.float64) for k in ("correct", "large_tokens", "total_tokens")}
    if ref.problem_ids is None or p.problem_ids is None:
        if (ref.problem_ids is None) != (p.problem_ids is None):
            raise ValueError(f"{p.label}: problem_ids present on one of {p.label!r}, {ref.label!r} only; "
                             "cannot align their problems")
        if p.n != ref.n:
            raise ValueError(f"{p.label}: {p.n} problems vs {ref.n} for {ref.label!r}; without problem_ids "
                             "the arrays must align by position")
        return arrs
    if set(p.problem_ids) != set(ref.problem_ids):
        extra = sorted(set(p.problem_ids) - set(ref.problem_ids))[:3]
        missing = sorted(set(ref.problem_ids) - set(p.problem_ids))[:3]
        raise ValueError(f"{p.label}: evaluated on other problems than {ref.label!r} "
                         f"(extra e.g. {extra}, missing e.g. {missing})")
    pos = {q: i for i, q in enumerate(p.problem_ids)}
    idx = np.array([pos[q] for q in ref.problem_ids])
    return {k: v[idx] for k, v in arrs.items()}


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def summarize(points: Iterable[CurvePoint], cfg: EvalConfig | None = None) -> dict[str, Any]:
    """JSON-serialisable summary of all methods (NaN written as ``null``; see the module docstring).

    Layout: ``srm``/``lrm`` (label, method, accuracy, n, interval ``acc_lo``/``acc_hi``), ``methods`` (list of
    ``{method, param_name, is_estimate, estimate_note, has_ci, points: [...], curve: {metric: {estimate,
    lo, hi}}}``), ``front`` (labels of the overall Pareto front, cost order), ``settings``.
    """
    cfg = cfg or EvalConfig()
    pts = list(points)
    srm, lrm = endpoints(pts)
    s_acc, l_acc = srm.accuracy, lrm.accuracy
    groups = group_by_method(pts)
    ends_arrays = srm.has_arrays and lrm.has_arrays and cfg.n_boot > 0

    # overall Pareto front, over every point including the endpoints (endpoints sit at cost 0 and 1)
    everyone = [srm, lrm] + [p for g in groups.values() for p in g]
    fc = [0.0 if p.role == "srm" else 1.0 if p.role == "lrm" else p.large_share for p in everyone]
    front_idx = pareto_front(fc, [p.accuracy for p in everyone]).tolist()
    on_front = {id(everyone[i]) for i in front_idx}

    ends_ci = {"acc_srm": None, "acc_lrm": None}
    methods = []
    for name, group in groups.items():
        costs = np.array([p.large_share for p in group])
        accs = np.array([p.accuracy for p in group])
        summ = curve_summary(costs, accs, s_acc, l_acc, xs=cfg.xs, auc_with_endpoints=cfg.auc_with_endpoints)
        has_ci = ends_arrays and all(p.has_arrays for p in group)
        boot = None
        if has_ci:
            al = [_aligned(p, srm) for p in group]
            boot = bootstrap_curve(np.stack([a["correct"] for a in al]), np.stack([a["large_tokens"] for a in al]),
                                   np.stack([a["total_tokens"] for a in al]), _aligned(srm, srm)["correct"],
                                   _aligned(lrm, srm)["correct"], n_boot=cfg.n_boot, seed=cfg.seed, ci=cfg.ci,
                                   xs=cfg.xs, auc_with_endpoints=cfg.auc_with_endpoints)
            ends_ci = boot["endpoints"]
        d_pts = _delta_ibc_unchecked(costs, accs, s_acc, l_acc)
        prows = []
        for i, p in enumerate(group):
            row = {"label": p.label, "param": p.param, "accuracy": p.accuracy, "large_share": p.large_share,
                   "flops": p.flops, "n": p.n, "pgr": summ["pgr"][i], "delta_ibc": float(d_pts[i]),
                   "on_front": id(p) in on_front, "is_estimate": p.is_estimate}
            if boot is not None:
                for k in ("accuracy", "large_share", "pgr"):
                    row[f"{k}_lo"] = boot["points"][k]["lo"][i]
                    row[f"{k}_hi"] = boot["points"][k]["hi"][i]
            prows.append(row)
        keys = ["max_pgr"] + [f"cpt_{round(100 * x)}" for x in cfg.xs] + ["delta_ibc", "auc"]
        curve = {k: (dict(boot["curve"][k]) if boot is not None
                     else {"estimate": summ[k], "lo": None, "hi": None}) for k in keys}
        notes = sorted({p.estimate_note for p in group if p.is_estimate and p.estimate_note})
        methods.append({"method": name, "param_name": group[0].param_name,
                        "is_estimate": any(p.is_estimate for p in group), "estimate_note": "; ".join(notes),
                        "has_ci": has_ci, "points": prows, "curve": curve})

    def end(p: CurvePoint, ci: dict | None) -> dict[str, Any]:
        return {"label": p.label, "method": p.method, "accuracy": p.accuracy, "large_share": p.large_share,
                "flops": p.flops, "n": p.n, "is_estimate": p.is_estimate, "on_front": id(p) in on_front,
                "acc_lo": ci["lo"] if ci else None, "acc_hi": ci["hi"] if ci else None}

    front_labels = [everyone[i].label for i in front_idx]
    return _nan_to_none({
        "srm": end(srm, ends_ci["acc_srm"]), "lrm": end(lrm, ends_ci["acc_lrm"]), "methods": methods,
        "front": front_labels,
        "settings": {"n_boot": cfg.n_boot, "seed": cfg.seed, "ci": cfg.ci, "xs": list(cfg.xs),
                     "auc_with_endpoints": cfg.auc_with_endpoints, "title": cfg.title},
    })


# ------------------------------------------------------------------------------------------ markdown

def _f(x: Any, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _ci(est: Any, lo: Any, hi: Any, nd: int = 3, nan: str = "—") -> str:
    if est is None:
        return nan
    s = f"{est:.{nd}f}"
    if lo is not None or hi is not None:
        s += f" [{_f(lo, nd) if lo is not None else nan}, {_f(hi, nd) if hi is not None else nan}]"
    return s


def _flops(x: Any) -> str:
    return "—" if x is None else f"{x:.3g}"


def render_markdown(summary: dict[str, Any]) -> str:
    """Markdown report from :func:`summarize`'s output."""
    st = summary["settings"]
    srm, lrm = summary["srm"], summary["lrm"]
    pct = [round(100 * x) for x in st["xs"]]
    L = [f"# {st['title']}", ""]
    L.append(f"Cost = large-model (LRM) token share. Endpoints: **SRM-only** (`{srm['label']}`) accuracy "
             f"{_ci(srm['accuracy'], srm['acc_lo'], srm['acc_hi'])} at share 0; **LRM-only** "
             f"(`{lrm['label']}`) accuracy {_ci(lrm['accuracy'], lrm['acc_lo'], lrm['acc_hi'])} at share 1; "
             f"{srm['n']} problems.")
    L.append("")
    if any(m["has_ci"] for m in summary["methods"]):
        L.append(f"Intervals in brackets: {round(100 * st['ci'])}% percentile bootstrap over problems "
                 f"({st['n_boot']} replicates, seed {st['seed']}), paired across points, methods and "
                 "endpoints. Methods without per-problem records have no intervals.")
        L.append("")
    if any(m["is_estimate"] for m in summary["methods"]) or srm["is_estimate"] or lrm["is_estimate"]:
        L.append("**Methods marked (estimate) have estimated, not graded, outcomes: their accuracies and "
                 "every metric built on them are estimates.**")
        L.append("")
    L += ["## Curve metrics", ""]
    hdr = ["method", "points", "max PGR"] + [f"CPT({p}%)" for p in pct] + ["ΔIBC", "AUC"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for m in summary["methods"]:
        c = m["curve"]
        name = m["method"] + (" (estimate)" if m["is_estimate"] else "")
        cells = [name, str(len(m["points"])), _ci(c["max_pgr"]["estimate"], c["max_pgr"]["lo"], c["max_pgr"]["hi"])]
        for p in pct:
            e = c[f"cpt_{p}"]
            cells.append(_ci(e["estimate"], e["lo"], e["hi"], nan="n.r."))
        for k in ("delta_ibc", "auc"):
            cells.append(_ci(c[k]["estimate"], c[k]["lo"], c[k]["hi"]))
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    L.append(f"PGR = (acc − acc_SRM)/(acc_LRM − acc_SRM). CPT(x%) = least large-model share among the "
             f"method's points with PGR ≥ x% (n.r. = not reached; an interval bound n.r. means more than "
             f"{(100 - round(100 * st['ci'])) / 2:g}% of replicates did not reach it). ΔIBC = mean over "
             "the method's points with share > 0 of (IBC − IBC_base)/IBC_base, IBC = (acc − acc_SRM)/share, "
             "IBC_base = acc_LRM − acc_SRM (0 = on the SRM→LRM straight line). AUC = area under the "
             "Pareto front over share in [0, 1]"
             + (" of the method's points together with the SRM-only and LRM-only endpoints."
                if st["auc_with_endpoints"] else ", extended flat to shares 0 and 1."))
    L.append("")
    L.append("Overall Pareto front (all methods and endpoints, cost order): "
             + ", ".join(f"`{x}`" for x in summary["front"]) + ".")
    for m in summary["methods"]:
        L += ["", f"## {m['method']}" + (" (estimate)" if m["is_estimate"] else ""), ""]
        if m["is_estimate"]:
            L += ["Accuracy is an **estimate**" + (f": {m['estimate_note']}." if m["estimate_note"] else "."), ""]
        pname = m["param_name"] or "param"
        hdr = [pname, "accuracy", "large share", "FLOPs/problem", "PGR", "ΔIBC", "front"]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "---|" * len(hdr))
        for p in m["points"]:
            acc = _ci(p["accuracy"], p.get("accuracy_lo"), p.get("accuracy_hi"))
            if p["is_estimate"]:
                acc = "≈" + acc
            cells = ["—" if p["param"] is None else str(p["param"]), acc,
                     _ci(p["large_share"], p.get("large_share_lo"), p.get("large_share_hi")),
                     _flops(p["flops"]), _ci(p["pgr"], p.get("pgr_lo"), p.get("pgr_hi")),
                     _f(p["delta_ibc"], 2), "◆" if p["on_front"] else ""]
            L.append("| " + " | ".join(cells) + " |")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------------------------- the folder

def write_report(points: Sequence[CurvePoint], out_dir: str | os.PathLike,
                 cfg: EvalConfig | None = None) -> dict[str, Path]:
    """Write ``points.jsonl``, ``summary.json``, the markdown report and the PNG plot into ``out_dir``.

    Returns the paths by kind (``points``, ``summary``, ``report``, ``plot``).
    """
    from .plots import plot_curves  # matplotlib only when a plot is wanted

    cfg = cfg or EvalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pts = list(points)
    summary = summarize(pts, cfg)
    paths = {"points": write_points(out / POINTS_FILE, pts),
             "summary": out / cfg.summary_file, "report": out / cfg.report_file, "plot": out / cfg.plot_file}
    atomic_write_json(paths["summary"], summary, indent=1, allow_nan=False)
    paths["report"].write_text(render_markdown(summary) + f"\n![{cfg.title}]({cfg.plot_file})\n")
    plot_curves(summary, paths["plot"], dpi=cfg.dpi, show_ci=cfg.show_ci)
    return paths


def report_from_file(points_path: str | os.PathLike, out_dir: str | os.PathLike,
                     cfg: EvalConfig | None = None) -> dict[str, Path]:
    """Re-read a points file written by the eval pipeline and write the report folder. A file without
    exactly one SRM-only and one LRM-only record is an :class:`~roro_jax.types.InputError` naming it."""
    points = read_points(points_path)
    try:
        endpoints(points)
    except ValueError as e:
        raise InputError(f"{points_path}: {e}") from None
    return write_report(points, out_dir, cfg)
