"""Metrics on the measured TRIM curves (MATH-500, Qwen2.5-1.5B -> 7B), read in place from ../shared/data."""

import json

import numpy as np
import pytest

from roro_jax.eval import metrics as M
from roro_jax.eval.records import load_reference_curve

pytestmark = pytest.mark.shared_data

THR = "trim_thr_math500_qwen2.5-1.5b_7b.jsonl"
POMDP = "trim_pomdp_math500_qwen2.5-1.5b_7b.jsonl"


def _rows(shared_data, name):
    path = shared_data / "reference" / name
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _endpoints(shared_data):
    rows = {r["threshold"]: r for r in _rows(shared_data, THR)}
    return rows[0.0], rows[1.0]


def _print(capsys, name, s):
    with capsys.disabled():
        print(f"\n[reference {name}] max PGR {s['max_pgr']:.4f}  CPT50 {s['cpt_50']:.4f}  "
              f"CPT80 {s['cpt_80']:.4f}  CPT95 {s['cpt_95']:.4f}  ΔIBC {s['delta_ibc']:.4f}  "
              f"AUC {s['auc']:.4f}")


def test_trim_thr_endpoints_and_monotone_cpt(shared_data, capsys):
    rows = _rows(shared_data, THR)
    c = np.array([r["target_token_frac"] for r in rows])
    a = np.array([r["accuracy"] for r in rows])
    lo, hi = _endpoints(shared_data)
    s_acc, l_acc = lo["accuracy"], hi["accuracy"]
    assert (lo["target_token_frac"], s_acc) == (0.0, 0.364)
    assert (hi["target_token_frac"], l_acc) == (1.0, 0.73)
    assert M.pgr(s_acc, s_acc, l_acc) == 0.0
    assert M.pgr(l_acc, s_acc, l_acc) == 1.0

    xs = np.linspace(0.0, 1.0, 201)
    v = M.cpt(c, a, s_acc, l_acc, xs)
    assert not np.any(np.isnan(v))             # the LRM endpoint reaches every x <= 1
    assert np.all(v[1:] >= v[:-1])
    assert v[0] == 0.0 and v[-1] == 1.0        # x=0: SRM endpoint; x=1: only the LRM endpoint

    s = M.curve_summary(c, a, s_acc, l_acc)
    _print(capsys, "TRIM-Thr (all 21 rows)", s)
    # figures that follow from the file: PGR 95% = acc 0.7117, first reached at threshold 0.9 (acc .714)
    assert s["cpt_95"] == pytest.approx(rows[18]["target_token_frac"])
    assert 0.0 < s["cpt_50"] < s["cpt_80"] < s["cpt_95"] < 1.0
    assert s["delta_ibc"] > 0                 # the sweep lies above the SRM->LRM straight line
    assert (s_acc + l_acc) / 2 < s["auc"] < l_acc
    assert s["max_pgr"] == 1.0


def test_trim_thr_interior_only(shared_data, capsys):
    pts = load_reference_curve(shared_data / "reference" / THR, "TRIM-Thr", param_field="threshold")
    roles = [p.role for p in pts]
    assert roles.count("srm") == 1 and roles.count("lrm") == 1
    srm = next(p for p in pts if p.role == "srm")
    lrm = next(p for p in pts if p.role == "lrm")
    assert (srm.accuracy, lrm.accuracy, srm.n) == (0.364, 0.73, 500)
    inner = [p for p in pts if p.role == "method"]
    assert len(inner) == 19
    s = M.curve_summary([p.large_share for p in inner], [p.accuracy for p in inner], srm.accuracy, lrm.accuracy)
    _print(capsys, "TRIM-Thr (sweep points, endpoints added for AUC)", s)
    assert s["max_pgr"] < 1.0
    v = M.cpt([p.large_share for p in inner], [p.accuracy for p in inner], srm.accuracy, lrm.accuracy,
              np.linspace(0, 1, 101))
    finite = v[~np.isnan(v)]
    assert np.all(np.diff(finite) >= 0) and np.all(np.isnan(v[len(finite):]))  # NaN only past the best PGR


def test_trim_pomdp(shared_data, capsys):
    rows = _rows(shared_data, POMDP)
    lo, hi = _endpoints(shared_data)
    c = np.array([r["target_token_frac"] for r in rows])
    a = np.array([r["accuracy"] for r in rows])
    s = M.curve_summary(c, a, lo["accuracy"], hi["accuracy"])
    _print(capsys, "TRIM-POMDP (8 rows, TRIM-Thr endpoints)", s)
    assert s["max_pgr"] < 0.95 and np.isnan(s["cpt_95"])   # the file's best point: acc 0.684
    assert s["cpt_50"] <= s["cpt_80"]
    assert s["delta_ibc"] > 0
    xs = np.linspace(0, 1, 101)
    v = M.cpt(c, a, lo["accuracy"], hi["accuracy"], xs)
    v = np.where(np.isnan(v), np.inf, v)
    assert np.all(v[1:] >= v[:-1])
