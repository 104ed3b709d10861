"""Bootstrap confidence intervals over problems for accuracy–cost curves (numpy, vectorised).

A replicate resamples the test problems with replacement (one multinomial count vector per replicate);
every sweep point of a method *and* the SRM-only/LRM-only endpoints are recomputed on the same resampled
problems (a paired bootstrap, so correlated errors between points cancel as they should), then the curve
metrics are recomputed per replicate with :func:`roro_jax.eval.metrics.curve_metrics_batched`.  With the
same ``seed`` and the same problem order, every method sees the same replicates.

Intervals are percentile intervals.  Replicates in which the LRM is not more accurate than the SRM (equal
accuracies, or the LRM below the SRM, as in some replicates of a small test set such as AIME 2025's) leave
the PGR-based metrics undefined and are left out of those metrics' intervals (``n_valid`` counts the rest).
Kept, a replicate with the LRM below the SRM would flip the sign of PGR, and a point worse than SRM-only
would reach CPT targets.
A CPT that a replicate does not reach counts as an infinite cost, so an upper bound that falls on such
replicates is reported as NaN ("not reached").
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .metrics import DEFAULT_XS, _check_gap, curve_metrics_batched, curve_summary

_NOT_REACHED = 2.0  # stands in for +inf cost when taking percentiles of CPT (all real costs are <= 1)


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` integer counts: how often each of n problems is drawn in each replicate."""
    if n <= 0 or n_boot <= 0:
        raise ValueError(f"bootstrap_counts: n and n_boot must be positive, got n={n}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def _interval(v: np.ndarray, ci: float) -> tuple[float, float]:
    q = np.quantile(v, [(1 - ci) / 2, (1 + ci) / 2])
    return float(q[0]), float(q[1])


def bootstrap_curve(correct: Any, large_tokens: Any, total_tokens: Any, srm_correct: Any, lrm_correct: Any,
                    *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                    xs: Sequence[float] = DEFAULT_XS, auc_with_endpoints: bool = True) -> dict[str, Any]:
    """Point estimates and percentile CIs for one method's curve.

    Args:
      correct, large_tokens, total_tokens: ``[K, n]`` per-problem arrays of the method's K points (rows
        aligned on the same n problems; correctness in [0, 1]).
      srm_correct, lrm_correct: ``[n]`` per-problem correctness of the SRM-only and LRM-only endpoints, on
        the same problems in the same order.
      n_boot, seed, ci: replicates, RNG seed, interval level.
      xs, auc_with_endpoints: as in :func:`roro_jax.eval.metrics.curve_summary`.

    Returns a JSON-serialisable dict: ``curve`` maps each scalar metric of ``curve_summary`` (``max_pgr``,
    ``cpt_*``, ``delta_ibc``, ``auc``) to ``{"estimate", "lo", "hi", "n_valid"}``; ``points`` maps
    ``accuracy``, ``large_share`` and ``pgr`` to ``{"estimate", "lo", "hi"}`` lists over the K points;
    ``endpoints`` holds the same for ``acc_srm`` and ``acc_lrm``; plus ``n_boot``, ``seed``, ``ci``.
    Estimates are computed on the original sample (not the replicate mean).
    """
    C = np.atleast_2d(np.asarray(correct, np.float64))
    L = np.atleast_2d(np.asarray(large_tokens, np.float64))
    T = np.atleast_2d(np.asarray(total_tokens, np.float64))
    s = np.asarray(srm_correct, np.float64)
    l = np.asarray(lrm_correct, np.float64)
    K, n = C.shape
    if L.shape != (K, n) or T.shape != (K, n) or s.shape != (n,) or l.shape != (n,):
        raise ValueError(f"bootstrap_curve: shapes disagree: correct {C.shape}, large_tokens {L.shape}, "
                         f"total_tokens {T.shape}, srm_correct {s.shape}, lrm_correct {l.shape}")
    for name, a in (("correct", C), ("large_tokens", L), ("total_tokens", T), ("srm_correct", s),
                    ("lrm_correct", l)):
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"bootstrap_curve: '{name}' must be finite and non-negative")
    if np.any(T.sum(axis=1) <= 0):
        raise ValueError("bootstrap_curve: a point has no tokens at all (sum of total_tokens is 0)")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"bootstrap_curve: ci must lie in (0, 1), got {ci}")

    # estimates on the original sample
    acc, share = C.mean(axis=1), L.sum(axis=1) / T.sum(axis=1)
    acc_s, acc_l = float(s.mean()), float(l.mean())
    _check_gap(acc_s, acc_l)
    est = curve_summary(share, acc, acc_s, acc_l, xs=xs, auc_with_endpoints=auc_with_endpoints)

    # replicates: counts W [B, n]; per-point sums are matrix products
    W = bootstrap_counts(n, n_boot, seed).astype(np.float64)
    acc_b = W @ C.T / n                                    # [B, K]
    tot_b = W @ T.T
    with np.errstate(invalid="ignore", divide="ignore"):
        share_b = np.where(tot_b > 0, (W @ L.T) / np.where(tot_b > 0, tot_b, 1.0), 0.0)
    s_b, l_b = W @ s / n, W @ l / n                        # [B]
    m = curve_metrics_batched(share_b, acc_b, s_b, l_b, xs=xs, auc_with_endpoints=auc_with_endpoints)
    gap_ok = l_b > s_b  # a positive SRM->LRM gap: PGR is defined (roro_jax.eval.metrics)

    curve: dict[str, dict[str, float]] = {}
    for key, v in m.items():
        if key == "pgr":
            continue
        valid = gap_ok if key != "auc" else np.ones_like(gap_ok)
        vals = v[valid]
        if key.startswith("cpt_"):
            vals = np.where(np.isnan(vals), _NOT_REACHED, vals)
        lo, hi = _interval(vals, ci) if vals.size else (np.nan, np.nan)
        if key.startswith("cpt_"):
            lo, hi = (np.nan if lo > 1 else lo), (np.nan if hi > 1 else hi)
        curve[key] = {"estimate": float(est[key]), "lo": lo, "hi": hi, "n_valid": int(vals.size)}

    def per_point(b: np.ndarray, e: np.ndarray) -> dict[str, list[float]]:
        q = np.nanquantile(b, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
        return {"estimate": np.asarray(e, np.float64).tolist(), "lo": q[0].tolist(), "hi": q[1].tolist()}

    pgr_b = np.where(gap_ok[:, None], m["pgr"], np.nan)
    points = {"accuracy": per_point(acc_b, acc), "large_share": per_point(share_b, share),
              "pgr": per_point(pgr_b, np.asarray(est["pgr"]))}
    ends = {"acc_srm": {"estimate": acc_s, **dict(zip(("lo", "hi"), _interval(s_b, ci)))},
            "acc_lrm": {"estimate": acc_l, **dict(zip(("lo", "hi"), _interval(l_b, ci)))}}
    return {"curve": curve, "points": points, "endpoints": ends, "n_boot": int(n_boot), "seed": int(seed),
            "ci": float(ci)}
