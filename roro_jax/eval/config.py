"""Settings of the evaluation layer (report, bootstrap, plot).

Kept here rather than in ``roro_jax/config.py`` so the evaluation layer can be used on its own; the
project config may embed an ``EvalConfig`` and pass it through.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import DEFAULT_XS


@dataclass(frozen=True)
class EvalConfig:
    """Report settings.

    ``n_boot`` bootstrap replicates over problems (0 disables intervals), ``seed`` their RNG seed, ``ci``
    the interval level; ``xs`` the PGR levels for CPT (fractions); ``auc_with_endpoints`` see
    :func:`roro_jax.eval.metrics.curve_summary`; ``title`` of report and plot; output file names inside
    the report folder; ``dpi`` of the PNG; ``show_ci`` draws per-point interval bars in the plot.
    """

    n_boot: int = 1000
    seed: int = 0
    ci: float = 0.95
    xs: tuple[float, ...] = DEFAULT_XS
    auc_with_endpoints: bool = True
    title: str = "Accuracy vs large-model token share"
    report_file: str = "report.md"
    plot_file: str = "curves.png"
    summary_file: str = "summary.json"
    dpi: int = 150
    show_ci: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.n_boot, int) or self.n_boot < 0:
            raise ValueError(f"EvalConfig.n_boot must be a non-negative integer, got {self.n_boot!r}")
        if not 0.0 < self.ci < 1.0:
            raise ValueError(f"EvalConfig.ci must lie in (0, 1), got {self.ci!r}")
        xs = tuple(float(x) for x in self.xs)
        if not xs or any(not 0.0 <= x <= 1.0 for x in xs):
            raise ValueError(f"EvalConfig.xs must be fractions in [0, 1] (e.g. 0.95), got {self.xs!r}")
        if len({round(100 * x) for x in xs}) != len(xs):
            raise ValueError(f"EvalConfig.xs must differ in whole percents, got {self.xs!r}")
        object.__setattr__(self, "xs", xs)
        if self.dpi <= 0:
            raise ValueError(f"EvalConfig.dpi must be positive, got {self.dpi!r}")
