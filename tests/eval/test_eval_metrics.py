"""Curve metrics on small hand-computed curves (DESIGN.md §3 definitions)."""

import math

import numpy as np
import pytest

from roro_jax.eval import metrics as M

S, L = 0.4, 0.8  # acc_srm, acc_lrm: gap 0.4


# ---------------------------------------------------------------------------------------------- pgr

def test_pgr_hand_values_and_broadcast():
    np.testing.assert_allclose(M.pgr([0.4, 0.8, 0.6, 0.3, 0.9], S, L), [0.0, 1.0, 0.5, -0.25, 1.25])
    assert M.pgr(0.7, S, L).shape == ()
    # broadcasting over per-replicate endpoints
    np.testing.assert_allclose(M.pgr([[0.6], [0.6]], np.array([0.4, 0.5]), 0.8), [[0.5, 1 / 3], [0.5, 1 / 3]])


def test_pgr_rejects_zero_gap_and_nonfinite():
    with pytest.raises(ValueError, match="gap is zero"):
        M.pgr(0.5, 0.6, 0.6)
    with pytest.raises(ValueError, match="acc"):
        M.pgr([0.5, np.nan], S, L)
    with pytest.raises(ValueError, match="acc_lrm"):
        M.pgr(0.5, S, np.inf)


# ---------------------------------------------------------------------------------------------- cpt

# unsorted points: pgr = 0.25, 0.75, 0.8, 0.975
C4, A4 = [0.1, 0.3, 0.2, 0.5], [0.5, 0.7, 0.72, 0.79]


def test_cpt_hand_values():
    assert M.cpt(C4, A4, S, L, 0.0) == pytest.approx(0.1)
    assert M.cpt(C4, A4, S, L, 0.5) == pytest.approx(0.2)   # {0.3, 0.2, 0.5} reach 0.5
    # 0.72 gives PGR 0.7999999999999998 in floating point: counts as reaching 80% (PGR_ATOL)
    assert M.cpt(C4, A4, S, L, 0.8) == pytest.approx(0.2)
    assert M.cpt(C4, A4, S, L, 0.95) == pytest.approx(0.5)
    assert isinstance(M.cpt(C4, A4, S, L, 0.95), float)


def test_cpt_not_reached_is_nan_and_vector_x():
    assert math.isnan(M.cpt(C4, A4, S, L, 0.99))
    out = M.cpt(C4, A4, S, L, [0.5, 0.8, 0.95, 0.99])
    np.testing.assert_allclose(out, [0.2, 0.2, 0.5, np.nan])


def test_cpt_order_and_duplicates_do_not_matter():
    perm = [3, 1, 0, 2]
    for x in (0.5, 0.8, 0.95):
        assert M.cpt(np.array(C4)[perm], np.array(A4)[perm], S, L, x) == M.cpt(C4, A4, S, L, x)
        assert M.cpt(C4 + C4, A4 + A4, S, L, x) == M.cpt(C4, A4, S, L, x)


def test_cpt_ignores_dominated_cheaper_points_below_x():
    # a cheap point below x never counts, however cheap; an expensive point above x counts if alone
    assert M.cpt([0.0, 0.9], [0.79, 0.8], S, L, 1.0) == pytest.approx(0.9)


def test_cpt_monotone_in_x_random():
    rng = np.random.default_rng(0)
    c, a = rng.uniform(0, 1, 30), rng.uniform(0.3, 0.85, 30)
    xs = np.linspace(0, 1, 101)
    v = M.cpt(c, a, S, L, xs)
    v = np.where(np.isnan(v), np.inf, v)
    assert np.all(v[1:] >= v[:-1])


def test_cpt_bad_input():
    with pytest.raises(ValueError, match=r"x must be a fraction"):
        M.cpt(C4, A4, S, L, 95)
    with pytest.raises(ValueError, match="differ in length"):
        M.cpt([0.1, 0.2], [0.5], S, L, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.cpt([1.2], [0.5], S, L, 0.5)
    with pytest.raises(ValueError, match="empty"):
        M.cpt([], [], S, L, 0.5)
    with pytest.raises(ValueError, match="gap is zero"):
        M.cpt(C4, A4, 0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------- delta_ibc

def test_delta_ibc_hand_values():
    # IBC_base = 0.4.  (0.25, 0.6): IBC 0.8 -> +1;  (1, 0.8): LRM endpoint -> 0;  (0.5, 0.6): on the line -> 0
    # (0.5, 0.3): IBC -0.2 -> -1.5;  (0, 0.4): cost 0 -> NaN (undefined), also for (0, 0.5)
    out = M.delta_ibc([0.25, 1.0, 0.5, 0.5, 0.0, 0.0], [0.6, 0.8, 0.6, 0.3, 0.4, 0.5], S, L)
    np.testing.assert_allclose(out[:4], [1.0, 0.0, 0.0, -1.5], atol=1e-12)
    assert np.isnan(out[4]) and np.isnan(out[5])


def test_delta_ibc_bad_input():
    with pytest.raises(ValueError, match="gap is zero"):
        M.delta_ibc(0.5, 0.6, 0.7, 0.7)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.delta_ibc(-0.1, 0.6, S, L)


def test_curve_delta_ibc_is_mean_over_positive_cost_points():
    s = M.curve_summary([0.0, 0.25, 0.5], [0.4, 0.6, 0.6], S, L)
    assert s["delta_ibc"] == pytest.approx((1.0 + 0.0) / 2)
    assert np.isnan(s["delta_ibc_points"][0])
    assert math.isnan(M.curve_summary([0.0], [0.4], S, L)["delta_ibc"])


# ---------------------------------------------------------------------------------------------- auc

def test_auc_hand_values():
    assert M.auc([0.3], [0.7]) == pytest.approx(0.7)                       # flat both ways
    assert M.auc([0.0, 1.0], [S, L]) == pytest.approx((S + L) / 2)          # the straight line
    # (0,.4) (.2,.7) (1,.8): .2*(.4+.7)/2 + .8*(.7+.8)/2 = .11 + .6
    assert M.auc([0.0, 0.2, 1.0], [0.4, 0.7, 0.8]) == pytest.approx(0.71)
    # flat extensions: .2*.6 + .4*(.6+.8)/2 + .4*.8 = .12 + .28 + .32
    assert M.auc([0.2, 0.6], [0.6, 0.8]) == pytest.approx(0.72)


def test_auc_dominated_duplicates_unsorted():
    base = M.auc([0.0, 0.2, 1.0], [0.4, 0.7, 0.8])
    # dominated (0.5, 0.6), a duplicate of (0.2, 0.7), a same-cost worse point, shuffled order
    c = [1.0, 0.5, 0.2, 0.0, 0.2, 0.2]
    a = [0.8, 0.6, 0.7, 0.4, 0.7, 0.65]
    assert M.auc(c, a) == pytest.approx(base)
    # a point matched in accuracy by a strictly cheaper one is dominated (would give 0.70 if kept)
    assert M.auc([0.2, 0.4, 0.6], [0.6, 0.6, 0.8]) == pytest.approx(0.72)


def test_auc_equals_a_fine_grid_integral_of_the_front():
    """Random curves: the AUC lies between the lowest and highest accuracy and equals a fine-grid trapezoid
    integral of the front's curve (straight lines between front points, flat outside them); a dominated
    point added anywhere leaves it unchanged."""
    rng = np.random.default_rng(1)
    grid = np.linspace(0.0, 1.0, 200_001)
    for _ in range(20):
        c, a = rng.uniform(0, 1, 8), rng.uniform(0, 1, 8)
        v = M.auc(c, a)
        assert a.min() - 1e-12 <= v <= a.max() + 1e-12
        f = M.pareto_front(c, a)
        assert v == pytest.approx(np.trapezoid(np.interp(grid, c[f], a[f]), grid), abs=1e-6)
        k = int(f[-1])  # the costliest front point dominates a point just costlier and less accurate
        assert M.auc(np.append(c, min(1.0, c[k] + 0.01)), np.append(a, a[k] - 0.01)) == pytest.approx(v)


def test_pareto_front_indices():
    c = [1.0, 0.5, 0.2, 0.0, 0.2, 0.2, 0.4]
    a = [0.8, 0.6, 0.7, 0.4, 0.7, 0.65, 0.7]
    # (0.2,0.7) appears at 2 and 4: the lower index is kept; (0.4,0.7) is matched by the cheaper (0.2,0.7)
    assert M.pareto_front(c, a).tolist() == [3, 2, 0]


# ------------------------------------------------------------------------------------ curve_summary

def test_curve_summary_keys_and_values():
    s = M.curve_summary(C4, A4, S, L)
    assert set(s) == {"pgr", "max_pgr", "cpt_50", "cpt_80", "cpt_95", "delta_ibc", "delta_ibc_points", "auc"}
    np.testing.assert_allclose(s["pgr"], [0.25, 0.75, 0.8, 0.975])
    assert s["max_pgr"] == pytest.approx(0.975)
    assert (s["cpt_50"], s["cpt_80"], s["cpt_95"]) == pytest.approx((0.2, 0.2, 0.5))
    # per point ΔIBC: (0.1,.5): IBC 1 -> 1.5; (.3,.7): 1 -> 1.5; (.2,.72): 1.6 -> 3; (.5,.79): .78 -> .95
    np.testing.assert_allclose(s["delta_ibc_points"], [1.5, 1.5, 3.0, 0.95])
    assert s["delta_ibc"] == pytest.approx((1.5 + 1.5 + 3.0 + 0.95) / 4)
    # AUC with endpoints: front (0,.4) (.1,.5) (.2,.72) (.5,.79) (1,.8)
    want = 0.1 * 0.9 / 2 + 0.1 * 1.22 / 2 + 0.3 * 1.51 / 2 + 0.5 * 1.59 / 2
    assert s["auc"] == pytest.approx(want)
    assert M.curve_summary(C4, A4, S, L, auc_with_endpoints=False)["auc"] == pytest.approx(M.auc(C4, A4))
    assert M.curve_summary(C4, A4, S, L, xs=(0.3,))["cpt_30"] == pytest.approx(0.2)


def test_batched_matches_single():
    rng = np.random.default_rng(2)
    B, K = 7, 9
    c, a = rng.uniform(0, 1, (B, K)), rng.uniform(0.2, 0.9, (B, K))
    s, l = rng.uniform(0.1, 0.3, B), rng.uniform(0.7, 0.9, B)
    m = M.curve_metrics_batched(c, a, s, l)
    for b in range(B):
        ref = M.curve_summary(c[b], a[b], s[b], l[b])
        for k in ("max_pgr", "cpt_50", "cpt_80", "cpt_95", "delta_ibc", "auc"):
            np.testing.assert_allclose(m[k][b], ref[k], err_msg=k)
    # zero-gap rows: PGR-based metrics NaN, auc still defined
    m = M.curve_metrics_batched(c[:1], a[:1], np.array([0.5]), np.array([0.5]))
    assert np.isnan(m["cpt_50"][0]) and np.isnan(m["delta_ibc"][0]) and np.isfinite(m["auc"][0])


def test_pgr_based_metrics_nan_when_the_lrm_is_below_the_srm():
    """PGR recovers a positive SRM->LRM gap; with the LRM below the SRM the sign would flip and a point worse
    than SRM-only (0.55 < 0.6) would reach every CPT target."""
    assert np.isnan(M.pgr(0.55, 0.6, 0.5))
    np.testing.assert_allclose(M.pgr([0.55, 0.7], [0.6, 0.5], [0.5, 0.9]), [np.nan, 0.5])
    assert np.isnan(M.cpt([0.1, 0.5], [0.55, 0.58], 0.6, 0.5, 0.5))
    assert np.isnan(M.delta_ibc(0.3, 0.55, 0.6, 0.5))
    s = M.curve_summary([0.1, 0.5], [0.55, 0.58], 0.6, 0.5)
    assert np.isnan(s["max_pgr"]) and np.isnan(s["cpt_50"]) and np.isnan(s["delta_ibc"])
    assert np.isnan(s["pgr"]).all() and np.isfinite(s["auc"])


def test_error_messages_name_the_offending_values():
    """Mutation-testing gaps: the messages list the bad costs and the positions of non-finite values, and x
    above 1 is refused."""
    with pytest.raises(ValueError, match=r"costs: large-model token share must lie in \[0, 1\], got \[-0.2, 1.5\]"):
        M.auc([0.1, -0.2, 1.5], [0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match=r"accs: non-finite values at flat positions \[1, 3\]"):
        M.auc([0.1, 0.2, 0.3, 0.4], [0.5, np.nan, 0.6, np.inf])
    with pytest.raises(ValueError, match="x must be a fraction"):
        M.cpt([0.1], [0.5], 0.4, 0.6, 1.5)


def test_curve_delta_ibc_of_a_single_costly_point():
    s = M.curve_summary([0.0, 0.25], [0.5, 0.7], 0.5, 0.9)  # one point with share > 0: its own ΔIBC
    assert s["delta_ibc"] == pytest.approx(((0.7 - 0.5) / 0.25 - 0.4) / 0.4)
