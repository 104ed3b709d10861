"""Evaluation: accuracy–cost curve metrics, bootstrap intervals, per-point records, report and plot.

The report/plot modules import matplotlib lazily; ``roro_jax.eval.metrics`` needs only numpy.
"""

from .bootstrap import bootstrap_counts, bootstrap_curve
from .config import EvalConfig
from .metrics import DEFAULT_XS, auc, cpt, curve_summary, delta_ibc, pareto_front, pgr
from .records import (CurvePoint, endpoints, group_by_method, load_reference_curve, point_from_trajectories,
                      read_points, write_points)
from .report import render_markdown, report_from_file, summarize, write_report

__all__ = [
    "DEFAULT_XS", "EvalConfig", "CurvePoint", "auc", "bootstrap_counts", "bootstrap_curve", "cpt",
    "curve_summary", "delta_ibc", "endpoints", "group_by_method", "load_reference_curve", "pareto_front",
    "pgr", "point_from_trajectories", "plot_curves", "read_points", "render_markdown", "report_from_file",
    "summarize", "write_points", "write_report",
]


def __getattr__(name):  # plot_curves pulls in matplotlib: import it on first use
    if name == "plot_curves":
        from .plots import plot_curves
        return plot_curves
    raise AttributeError(name)
