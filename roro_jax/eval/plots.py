"""Accuracy vs large-model token share plot (matplotlib, Agg backend, no global pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_SINGLE_MARKERS = ("D", "s", "^", "v", "P", "X", "h", "<", ">")


def plot_curves(summary: dict[str, Any] | Sequence[Any], path: str | os.PathLike, *, title: str | None = None,
                dpi: int = 150, show_ci: bool = True, figsize: tuple[float, float] = (9.0, 6.0)) -> Path:
    """Plot every method's accuracy against its large-model token share and save a PNG.

    ``summary`` is :func:`roro_jax.eval.report.summarize`'s output.  Methods with several points are drawn as lines in cost order,
    single points as markers; estimated outcomes use dashed lines and hollow markers.  The SRM-only and
    LRM-only endpoints are black stars joined by the dotted SRM→LRM straight line (ΔIBC = 0); the overall
    Pareto front is a thick grey line through the circled front points.  With ``show_ci`` and bootstrap
    intervals present, points get thin interval bars in both directions.
    """
    if not isinstance(summary, dict):
        raise TypeError("plot_curves: pass roro_jax.eval.report.summarize(records), not the records")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    srm, lrm = summary["srm"], summary["lrm"]

    # SRM -> LRM straight line and endpoints
    ax.plot([0, 1], [srm["accuracy"], lrm["accuracy"]], ls=":", color="0.45", lw=1.2, zorder=1,
            label="SRM→LRM straight line")
    for e, name, ha in ((srm, "SRM-only", "left"), (lrm, "LRM-only", "right")):
        x = 0.0 if e is srm else 1.0
        ax.plot([x], [e["accuracy"]], marker="*", ms=15, color="black", ls="none", zorder=6)
        if show_ci and e.get("acc_lo") is not None:
            ax.errorbar([x], [e["accuracy"]], yerr=[[e["accuracy"] - e["acc_lo"]], [e["acc_hi"] - e["accuracy"]]],
                        color="black", lw=0.8, capsize=3, zorder=5)
        ax.annotate(f"{name} {e['accuracy']:.3f}", (x, e["accuracy"]), textcoords="offset points",
                    xytext=(10, -5) if e is srm else (-10, -7), ha=ha, va="top", fontsize=9)

    # overall Pareto front
    fx, fy = [], []
    for m in summary["methods"]:
        for p in m["points"]:
            if p["on_front"]:
                fx.append(p["large_share"])
                fy.append(p["accuracy"])
    for x, e in ((0.0, srm), (1.0, lrm)):
        if e["on_front"]:
            fx.append(x)
            fy.append(e["accuracy"])
    order = np.argsort(fx, kind="stable")
    fx, fy = np.asarray(fx)[order], np.asarray(fy)[order]
    if len(fx):
        ax.plot(fx, fy, color="0.6", lw=7, alpha=0.35, solid_capstyle="round", zorder=2,
                label="Pareto front (all points, circled)")
        ax.plot(fx, fy, ls="none", marker="o", ms=11, mfc="none", mec="0.35", mew=1.2, zorder=4)

    # methods
    colors = list(colormaps["tab10"].colors)
    n_single = 0
    for i, m in enumerate(summary["methods"]):
        col = colors[i % len(colors)]
        pts = sorted(m["points"], key=lambda p: (p["large_share"], p["accuracy"]))
        x = np.array([p["large_share"] for p in pts])
        y = np.array([p["accuracy"] for p in pts])
        est = m["is_estimate"]
        label = m["method"] + (" (estimate)" if est else "")
        if len(pts) > 1:
            ax.plot(x, y, ls="--" if est else "-", marker="o", ms=4.5, lw=1.6, color=col,
                    mfc="white" if est else col, zorder=3, label=label)
        else:
            mk = _SINGLE_MARKERS[n_single % len(_SINGLE_MARKERS)]
            n_single += 1
            ax.plot(x, y, ls="none", marker=mk, ms=9, color=col, mfc="white" if est else col, mew=1.5,
                    zorder=5, label=label)
        if show_ci and m.get("has_ci"):
            ylo = np.array([p["accuracy_lo"] for p in pts])
            yhi = np.array([p["accuracy_hi"] for p in pts])
            xlo = np.array([p["large_share_lo"] for p in pts])
            xhi = np.array([p["large_share_hi"] for p in pts])
            ax.errorbar(x, y, yerr=[y - ylo, yhi - y], xerr=[x - xlo, xhi - x], ls="none", color=col,
                        lw=0.7, alpha=0.5, capsize=0, zorder=2.5)

    ys = [srm["accuracy"], lrm["accuracy"]] + [p["accuracy"] for m in summary["methods"] for p in m["points"]]
    if show_ci:
        ys += [v for e in (srm, lrm) for v in (e.get("acc_lo"), e.get("acc_hi")) if v is not None]
        ys += [v for m in summary["methods"] for p in m["points"] for v in (p.get("accuracy_lo"),
               p.get("accuracy_hi")) if v is not None]
    lo, hi = min(ys), max(ys)
    pad = 0.07 * (hi - lo if hi > lo else 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("large-model token share (cost)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or summary.get("settings", {}).get("title", "Accuracy vs large-model token share"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
