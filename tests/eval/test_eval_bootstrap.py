"""Paired bootstrap over problems: determinism, agreement with a hand resample, interval widths."""

import json

import numpy as np
import pytest

from roro_jax.eval import metrics as M
from roro_jax.eval.bootstrap import bootstrap_counts, bootstrap_curve


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    srm = (rng.uniform(size=n) < 0.4).astype(float)
    lrm = np.maximum(srm, rng.uniform(size=n) < 0.5)          # LRM solves what SRM solves and more
    K = 4
    rate = np.array([0.2, 0.4, 0.6, 0.9])[:, None]
    take = rng.uniform(size=(K, n)) < rate                      # escalate -> take the LRM outcome
    correct = np.where(take, lrm, srm)
    total = rng.integers(200, 400, size=(K, n)).astype(float)
    large = np.round(total * np.clip(rate + rng.normal(0, 0.05, (K, n)), 0, 1))
    return correct, large, total, srm, lrm


def test_counts_shape_and_sums():
    W = bootstrap_counts(50, 20, seed=3)
    assert W.shape == (20, 50) and np.all(W.sum(axis=1) == 50)
    np.testing.assert_array_equal(W, bootstrap_counts(50, 20, seed=3))
    assert not np.array_equal(W, bootstrap_counts(50, 20, seed=4))


def test_estimates_match_curve_summary_and_are_deterministic():
    C, Lt, T, s, l = _data()
    out = bootstrap_curve(C, Lt, T, s, l, n_boot=200, seed=1)
    ref = M.curve_summary(Lt.sum(1) / T.sum(1), C.mean(1), s.mean(), l.mean())
    for k in ("max_pgr", "cpt_50", "cpt_80", "delta_ibc", "auc"):
        assert out["curve"][k]["estimate"] == pytest.approx(ref[k], nan_ok=True)
    same = json.dumps(bootstrap_curve(C, Lt, T, s, l, n_boot=200, seed=1))  # NaN-safe comparison
    assert json.dumps(out) == same
    assert json.dumps(bootstrap_curve(C, Lt, T, s, l, n_boot=200, seed=2)) != same
    for k in ("max_pgr", "delta_ibc", "auc"):
        c = out["curve"][k]
        assert c["lo"] <= c["estimate"] <= c["hi"], k
        assert c["n_valid"] == 200


def test_one_replicate_equals_a_hand_resample():
    C, Lt, T, s, l = _data(n=120, seed=5)
    out = bootstrap_curve(C, Lt, T, s, l, n_boot=1, seed=9)      # interval of one replicate = its value
    idx = np.repeat(np.arange(120), bootstrap_counts(120, 1, seed=9)[0])
    ref = M.curve_summary(Lt[:, idx].sum(1) / T[:, idx].sum(1), C[:, idx].mean(1), s[idx].mean(), l[idx].mean())
    for k in ("max_pgr", "cpt_50", "delta_ibc", "auc"):
        assert out["curve"][k]["lo"] == pytest.approx(ref[k], nan_ok=True), k
    np.testing.assert_allclose(out["points"]["pgr"]["lo"], ref["pgr"])


def test_pairing_point_identical_to_an_endpoint_has_degenerate_pgr_interval():
    C, Lt, T, s, l = _data(n=200, seed=2)
    C = C.copy()
    C[0], C[-1] = s, l           # point 0 solves exactly the SRM's problems, the last the LRM's
    out = bootstrap_curve(C, Lt, T, s, l, n_boot=300, seed=0)
    p = out["points"]["pgr"]
    assert p["lo"][0] == pytest.approx(0.0) and p["hi"][0] == pytest.approx(0.0)
    assert p["lo"][-1] == pytest.approx(1.0) and p["hi"][-1] == pytest.approx(1.0)
    # unpaired, these would be wide: the accuracy interval itself is not degenerate
    a = out["points"]["accuracy"]
    assert a["hi"][0] - a["lo"][0] > 0.05


def test_accuracy_interval_width_matches_binomial():
    n = 400
    rng = np.random.default_rng(0)
    c = (rng.permutation(n) < n // 2).astype(float)[None]       # accuracy exactly 0.5
    s = np.zeros(n); s[:40] = 1
    l = np.ones(n)
    out = bootstrap_curve(c, np.ones((1, n)), np.full((1, n), 2.0), s, l, n_boot=2000, seed=0)
    a = out["points"]["accuracy"]
    width = a["hi"][0] - a["lo"][0]
    assert width == pytest.approx(2 * 1.96 * np.sqrt(0.25 / n), rel=0.15)   # ~0.098
    assert out["points"]["large_share"]["lo"][0] == pytest.approx(0.5)       # constant share


def test_cpt_upper_bound_not_reached_is_nan():
    n = 200
    s = np.zeros(n); s[:80] = 1          # 0.40
    l = np.zeros(n); l[:160] = 1         # 0.80
    c = np.zeros((1, n)); c[0, :158] = 1  # 0.79 -> PGR 0.975, just above 95%: many replicates fall below
    out = bootstrap_curve(c, np.full((1, n), 1.0), np.full((1, n), 4.0), s, l, n_boot=500, seed=0)
    cp = out["curve"]["cpt_95"]
    assert cp["estimate"] == pytest.approx(0.25)
    assert np.isnan(cp["hi"])
    assert out["curve"]["cpt_50"]["hi"] == pytest.approx(0.25)


def test_bad_input():
    C, Lt, T, s, l = _data(n=50)
    with pytest.raises(ValueError, match="shapes disagree"):
        bootstrap_curve(C, Lt, T, s[:-1], l)
    with pytest.raises(ValueError, match="gap is zero"):
        bootstrap_curve(C, Lt, T, s, s)
    with pytest.raises(ValueError, match="ci must"):
        bootstrap_curve(C, Lt, T, s, l, ci=95)


def test_replicates_with_the_lrm_below_the_srm_are_left_out():
    """A small test set with close SRM/LRM accuracies: in many replicates the LRM falls below the SRM. There
    PGR's sign would flip, and a point that never beats SRM-only would "recover" the gap and reach CPT
    targets; such replicates are left out (NaN), like those with a zero gap."""
    n = 20
    s = np.zeros(n); s[:10] = 1                  # SRM right on problems 0-9
    l = np.zeros(n); l[6:17] = 1                 # LRM right on 6-16: 11 of 20, overlapping SRM on 6-9 only
    c = np.zeros((2, n)); c[0, :8] = 1           # point 0 is right only where SRM is right: never above SRM
    c[1] = np.maximum(s, l)                      # point 1 takes the better model on every problem
    large, total = np.full((2, n), 1.0), np.full((2, n), 4.0)
    out = bootstrap_curve(c, large, total, s, l, n_boot=400, seed=0)
    W = bootstrap_counts(n, 400, seed=0)
    below = (W @ l < W @ s)                        # replicates where the LRM is below the SRM
    positive = (W @ l > W @ s)
    assert 0.2 < below.mean() < 0.6                # a real share of the replicates: the case is exercised
    for k in ("max_pgr", "cpt_50", "cpt_80", "delta_ibc"):
        assert out["curve"][k]["n_valid"] == positive.sum(), k
    assert out["curve"]["auc"]["n_valid"] == 400
    # point 0 is never more accurate than SRM-only in any replicate, so its PGR is never positive
    assert out["points"]["pgr"]["hi"][0] <= 0.0
    # and a curve whose best point is point 1 has PGR >= 1 in every valid replicate
    assert out["points"]["pgr"]["lo"][1] >= 1.0
    only0 = bootstrap_curve(c[:1], large[:1], total[:1], s, l, n_boot=400, seed=0)["curve"]
    assert np.isnan(only0["cpt_50"]["lo"]) and np.isnan(only0["cpt_50"]["hi"])  # never reaches 50%
    assert only0["max_pgr"]["hi"] <= 0.0


def test_curve_metrics_batched_nan_where_the_lrm_is_below():
    costs = np.array([[0.2, 0.5], [0.2, 0.5]])
    accs = np.array([[0.3, 0.35], [0.3, 0.35]])
    m = M.curve_metrics_batched(costs, accs, np.array([0.4, 0.2]), np.array([0.2, 0.4]))
    assert np.isnan(m["pgr"][0]).all() and np.isnan(m["max_pgr"][0]) and np.isnan(m["cpt_50"][0])
    assert np.isnan(m["delta_ibc"][0])
    np.testing.assert_allclose(m["pgr"][1], [0.5, 0.75])
    assert m["cpt_50"][1] == pytest.approx(0.2) and np.isfinite(m["auc"]).all()
