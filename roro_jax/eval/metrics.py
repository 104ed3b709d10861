"""Accuracy–cost curve metrics for stepwise routing (DESIGN.md §3).

Conventions used by every function here:

* ``cost`` is the large-model (LRM) token share of a policy, in ``[0, 1]``.  The SRM-only policy is the
  point ``(0, acc_srm)`` and the LRM-only policy the point ``(1, acc_lrm)``.
* ``acc`` is an accuracy in ``[0, 1]`` (any real number is accepted; only finiteness is checked).
* Inputs are array-likes (lists, numpy or jax arrays); outputs are numpy arrays or Python floats.

The public functions validate their input and raise ``ValueError`` with a message naming the offending
argument.  The ``_batched`` kernels below them do the arithmetic on ``[B, K]`` arrays (B curves of K
points, e.g. bootstrap replicates) without validation; they return NaN where a metric is undefined.

Definitions
-----------
``pgr``        (acc − acc_srm) / (acc_lrm − acc_srm), elementwise (performance-gap recovered).  NaN where
               acc_lrm < acc_srm: there is no gap to recover, and the sign would flip (a point worse than
               SRM-only would "recover" the gap and reach CPT targets).  Every PGR-based metric (max PGR,
               CPT, ΔIBC) follows: NaN there, and in a bootstrap those replicates are left out
               (:mod:`roro_jax.eval.bootstrap`).  A zero gap is an error in the public functions.
``cpt``        least cost among the points whose PGR ≥ x; NaN when no point reaches x.
``delta_ibc``  (IBC − IBC_base) / IBC_base with IBC = (acc − acc_srm)/cost and IBC_base = acc_lrm − acc_srm,
               elementwise.  At cost 0 the IBC (accuracy gained per unit of large-model share) is undefined
               (no large-model tokens were spent), so ``delta_ibc`` is NaN there; a curve's ΔIBC is the mean
               over its points with cost > 0 (NaN if there are none).
``auc``        area under the Pareto front, joined by straight lines in cost order, extended flat (at the
               first/last front point's accuracy) to cost 0 and to cost 1.

Pareto front: the points no other point dominates, where q dominates p when cost_q ≤ cost_p and
acc_q ≥ acc_p with at least one of the two strict (standard Pareto dominance).  So besides the points beaten
by a cheaper-or-equal, more accurate point, a point matched in accuracy by a strictly cheaper one is dominated
too (DESIGN.md §3 words only the first case; with accuracies that are multiples of 1/n, equal accuracies at
different costs are common, and keeping the costlier one would bend the front down).  Identical points
count once.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DEFAULT_XS = (0.5, 0.8, 0.95)
#: PGR comparisons in :func:`cpt` use ``pgr >= x - PGR_ATOL`` so that a point computed as 0.7999999999 from
#: decimal accuracies counts as reaching 80%.
PGR_ATOL = 1e-9


# ----------------------------------------------------------------------------------------------- checks

def _as_float_array(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: not a numeric array ({e})") from None
    return a


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a.ravel()))[:5].tolist()
        raise ValueError(f"{name}: non-finite values at flat positions {bad}")


def _check_costs(c: np.ndarray, name: str = "cost") -> None:
    _check_finite(c, name)
    if np.any((c < 0.0) | (c > 1.0)):
        bad = c.ravel()[(c.ravel() < 0) | (c.ravel() > 1)][:5].tolist()
        raise ValueError(f"{name}: large-model token share must lie in [0, 1], got {bad}")


def _check_gap(acc_srm: Any, acc_lrm: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_float_array(acc_srm, "acc_srm")
    l = _as_float_array(acc_lrm, "acc_lrm")
    _check_finite(s, "acc_srm")
    _check_finite(l, "acc_lrm")
    if np.any(np.broadcast_to(l - s, np.broadcast_shapes(s.shape, l.shape)) == 0.0):
        raise ValueError(f"acc_lrm == acc_srm ({float(np.ravel(l)[0])!r}): the SRM→LRM gap is zero, so PGR, "
                         "CPT and ΔIBC are undefined")
    return s, l


def _check_curve(costs: Any, accs: Any) -> tuple[np.ndarray, np.ndarray]:
    c = _as_float_array(costs, "costs")
    a = _as_float_array(accs, "accs")
    if c.ndim != 1 or a.ndim != 1:
        raise ValueError(f"costs and accs must be 1-D, got shapes {c.shape} and {a.shape}")
    if c.shape != a.shape:
        raise ValueError(f"costs and accs differ in length: {c.shape[0]} vs {a.shape[0]}")
    if c.size == 0:
        raise ValueError("empty curve: costs and accs have no points")
    _check_costs(c, "costs")
    _check_finite(a, "accs")
    return c, a


def _check_x(x: Any) -> np.ndarray:
    xa = _as_float_array(x, "x")
    _check_finite(xa, "x")
    if np.any((xa < 0.0) | (xa > 1.0)):
        raise ValueError(f"x must be a fraction in [0, 1] (e.g. 0.95 for CPT(95%)), got {xa.tolist()}")
    return xa


# ------------------------------------------------------------------------------------------ elementwise

def pgr(acc: Any, acc_srm: Any, acc_lrm: Any) -> np.ndarray:
    """Performance-gap recovered, ``(acc − acc_srm) / (acc_lrm − acc_srm)``, elementwise (broadcasting).

    0 at the SRM's accuracy, 1 at the LRM's; may be negative or exceed 1.  NaN where ``acc_lrm < acc_srm``
    (no gap to recover; the module docstring says why).  Raises ``ValueError`` when ``acc_lrm == acc_srm``
    (zero gap) or an input is not finite.
    """
    a = _as_float_array(acc, "acc")
    _check_finite(a, "acc")
    s, l = _check_gap(acc_srm, acc_lrm)
    return _pgr_unchecked(a, s, l)


def _pgr_unchecked(a, s, l) -> np.ndarray:
    """PGR where the gap is positive, NaN elsewhere (no validation)."""
    gap = l - s
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0.0, (a - s) / np.where(gap > 0.0, gap, 1.0), np.nan)


def delta_ibc(cost: Any, acc: Any, acc_srm: Any, acc_lrm: Any) -> np.ndarray:
    """Relative gain in incremental benefit per cost over the SRM→LRM straight line, elementwise.

    ``IBC = (acc − acc_srm) / cost``, ``IBC_base = acc_lrm − acc_srm`` (the slope of the straight line from
    SRM-only to LRM-only), result ``(IBC − IBC_base) / IBC_base``.  0 for any point on that line (so 0 for
    the LRM-only endpoint), > 0 above it.  Where ``cost == 0`` the result is NaN (IBC undefined: no
    large-model tokens were spent), and where ``acc_lrm < acc_srm`` (no gap to recover).  Raises ``ValueError`` on a zero gap, costs outside [0, 1] or
    non-finite input.
    """
    c = _as_float_array(cost, "cost")
    _check_costs(c, "cost")
    a = _as_float_array(acc, "acc")
    _check_finite(a, "acc")
    s, l = _check_gap(acc_srm, acc_lrm)
    return _delta_ibc_unchecked(c, a, s, l)


def _delta_ibc_unchecked(c, a, s, l) -> np.ndarray:
    base = l - s
    with np.errstate(divide="ignore", invalid="ignore"):
        ibc = (a - s) / c
        out = (ibc - base) / base
    return np.where((c > 0.0) & (base > 0.0), out, np.nan)


# --------------------------------------------------------------------------------------- curve kernels

def _front_mask_batched(costs: np.ndarray, accs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order and Pareto membership of ``[B, K]`` curves.

    Returns ``order`` [B, K] (indices sorting each row by cost ascending, accuracy descending; stable, so
    identical points keep their input order) and ``on_front`` [B, K] in that sorted order.  Every
    predecessor of p in that order has cost ≤ cost_p, and every point that dominates p or is identical to
    it precedes p.  So p is on the front (and is the first of its identical copies) iff its accuracy is
    strictly above the running maximum of its predecessors' accuracies.
    """
    order = np.lexsort((-accs, costs), axis=-1)
    a = np.take_along_axis(accs, order, axis=-1)
    prev_max = np.maximum.accumulate(a, axis=-1)
    prev_max = np.concatenate([np.full(a.shape[:-1] + (1,), -np.inf), prev_max[..., :-1]], axis=-1)
    return order, a > prev_max


def _auc_batched(costs: np.ndarray, accs: np.ndarray) -> np.ndarray:
    """Area under the Pareto front of each row of ``[B, K]`` costs/accuracies (no validation)."""
    order, front = _front_mask_batched(costs, accs)
    c = np.take_along_axis(costs, order, axis=-1)
    a = np.take_along_axis(accs, order, axis=-1)
    K = c.shape[-1]
    idx = np.broadcast_to(np.arange(K), c.shape)
    # index of the last front point at or before each position; the first sorted point is always on front
    last_front = np.maximum.accumulate(np.where(front, idx, -1), axis=-1)
    prev = np.concatenate([np.zeros(c.shape[:-1] + (1,), int), last_front[..., :-1]], axis=-1)
    c_prev = np.take_along_axis(c, prev, axis=-1)
    a_prev = np.take_along_axis(a, prev, axis=-1)
    seg = np.where(front, (c - c_prev) * (a + a_prev) / 2.0, 0.0)
    seg[..., 0] = 0.0
    first_c, first_a = c[..., 0], a[..., 0]
    last = last_front[..., -1:]
    last_c = np.take_along_axis(c, last, axis=-1)[..., 0]
    last_a = np.take_along_axis(a, last, axis=-1)[..., 0]
    return first_c * first_a + seg.sum(axis=-1) + (1.0 - last_c) * last_a


def _cpt_batched(costs: np.ndarray, pgrs: np.ndarray, x: float) -> np.ndarray:
    """Least cost with PGR ≥ x per row of ``[B, K]`` (NaN where none; NaN PGRs never qualify)."""
    ok = pgrs >= x - PGR_ATOL
    best = np.min(np.where(ok, costs, np.inf), axis=-1)
    return np.where(np.isfinite(best), best, np.nan)


def _mean_delta_ibc_batched(costs, accs, s, l) -> np.ndarray:
    d = _delta_ibc_unchecked(costs, accs, s, l)
    n = np.sum(np.isfinite(d), axis=-1)
    tot = np.sum(np.where(np.isfinite(d), d, 0.0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


# ------------------------------------------------------------------------------------- curve functions

def cpt(costs: Any, accs: Any, acc_srm: float, acc_lrm: float, x: Any) -> Any:
    """Cost to reach performance threshold x: the least cost among the points whose PGR ≥ x.

    ``x`` is a fraction in [0, 1] (0.95 for CPT(95%)); a scalar gives a float, an array of x an array.
    NaN where no point reaches x (the SRM/LRM endpoints are not added implicitly: include them in
    ``costs``/``accs`` if they should count).  Point order does not matter.  Because the set of points
    with PGR ≥ x shrinks as x grows, CPT is non-decreasing in x.
    """
    c, a = _check_curve(costs, accs)
    xa = _check_x(x)
    p = pgr(a, acc_srm, acc_lrm)
    out = np.array([_cpt_batched(c[None], p[None], float(xi))[0] for xi in xa.ravel()]).reshape(xa.shape)
    return float(out) if out.ndim == 0 else out


def pareto_front(costs: Any, accs: Any) -> np.ndarray:
    """Indices of the Pareto-front points in cost order (see the module docstring for dominance).

    Along the front both cost and accuracy strictly increase.  Among identical (cost, accuracy) points
    the lowest index is returned.
    """
    c, a = _check_curve(costs, accs)
    order, front = _front_mask_batched(c[None], a[None])
    return order[0][front[0]].astype(np.int64)


def auc(costs: Any, accs: Any) -> float:
    """Area under the Pareto front over cost in [0, 1].

    Front points are joined by straight lines in cost order; the curve is extended flat from cost 0 to the
    cheapest front point (at its accuracy) and from the most expensive front point to cost 1 (at its
    accuracy).  Dominated points do not contribute; point order does not matter.  A single point (c, a)
    gives ``a``; the SRM/LRM straight line alone gives ``(acc_srm + acc_lrm) / 2``.
    """
    c, a = _check_curve(costs, accs)
    return float(_auc_batched(c[None], a[None])[0])


def curve_summary(costs: Any, accs: Any, acc_srm: float, acc_lrm: float, *,
                  xs: Sequence[float] = DEFAULT_XS, auc_with_endpoints: bool = True) -> dict[str, Any]:
    """Curve metrics of one method's sweep (a plain, JSON-serialisable dict).

    Keys: ``pgr`` (list, per point, input order), ``max_pgr``, ``cpt_50``/``cpt_80``/``cpt_95`` (one
    ``cpt_{round(100 x)}`` per x in ``xs``; NaN when not reached), ``delta_ibc`` (mean of the per-point
    ΔIBC over points with cost > 0; NaN if none), ``delta_ibc_points`` (list), ``auc``.

    CPT, ΔIBC and max PGR use the method's own points only.  With ``auc_with_endpoints`` (default) the AUC
    is taken over the method's points together with the SRM-only (0, acc_srm) and LRM-only (1, acc_lrm)
    endpoints, which every router can reach; this keeps the flat extension of :func:`auc` from crediting a
    single operating point with its accuracy at every cost.  Set it to False for the plain :func:`auc`.
    """
    c, a = _check_curve(costs, accs)
    s, l = _check_gap(acc_srm, acc_lrm)
    s, l = float(s), float(l)
    xa = _check_x(list(xs))
    p = _pgr_unchecked(a, s, l)
    d = _delta_ibc_unchecked(c, a, s, l)
    out: dict[str, Any] = {"pgr": p.tolist(), "max_pgr": float(np.max(p))}
    for xi in xa.tolist():
        out[f"cpt_{round(100 * xi)}"] = float(_cpt_batched(c[None], p[None], xi)[0])
    out["delta_ibc"] = float(_mean_delta_ibc_batched(c[None], a[None], s, l)[0])
    out["delta_ibc_points"] = d.tolist()
    if auc_with_endpoints:
        c2, a2 = np.concatenate([c, [0.0, 1.0]]), np.concatenate([a, [s, l]])
    else:
        c2, a2 = c, a
    out["auc"] = float(_auc_batched(c2[None], a2[None])[0])
    return out


def curve_metrics_batched(costs: np.ndarray, accs: np.ndarray, acc_srm: np.ndarray, acc_lrm: np.ndarray, *,
                          xs: Sequence[float] = DEFAULT_XS,
                          auc_with_endpoints: bool = True) -> dict[str, np.ndarray]:
    """:func:`curve_summary`'s scalar metrics for B curves at once (no validation; for the bootstrap).

    ``costs``/``accs`` are [B, K], ``acc_srm``/``acc_lrm`` [B].  Rows whose gap is not positive (acc_lrm ≤
    acc_srm) give NaN for every PGR-based metric (``max_pgr``, ``cpt_*``, ``delta_ibc``); ``auc`` does not
    use the gap.  Also returns ``pgr`` [B, K].
    """
    s = np.asarray(acc_srm, np.float64)[:, None]
    l = np.asarray(acc_lrm, np.float64)[:, None]
    gap = l - s
    p = _pgr_unchecked(accs, s, l)
    out: dict[str, np.ndarray] = {"pgr": p, "max_pgr": np.max(p, axis=-1)}
    for xi in xs:
        out[f"cpt_{round(100 * xi)}"] = _cpt_batched(costs, p, float(xi))
    dibc = _mean_delta_ibc_batched(costs, accs, s, np.where(gap > 0.0, l, np.nan))
    out["delta_ibc"] = np.where(gap[:, 0] > 0.0, dibc, np.nan)
    if auc_with_endpoints:
        B = costs.shape[0]
        costs = np.concatenate([costs, np.zeros((B, 1)), np.ones((B, 1))], axis=-1)
        accs = np.concatenate([accs, s, l], axis=-1)
    out["auc"] = _auc_batched(costs, accs)
    return out
