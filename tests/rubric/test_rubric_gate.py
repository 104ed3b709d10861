"""Validation gate: McNemar decisions on constructed accuracy series, exact rollback, criterion checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import binomtest

from roro_jax.rubric.gate import (GateConfig, GateLog, criteria_to_prune, criterion_stats, gated_phase,
                                  mcnemar_gate)


def series(n, old_acc, b, c, seed=0):
    """Old/new correctness over n pairs with old accuracy old_acc, b wins and c losses for the new one."""
    rng = np.random.default_rng(seed)
    old = np.zeros(n, bool)
    old[:int(old_acc * n)] = True
    new = old.copy()
    wrong, right = np.flatnonzero(~old), np.flatnonzero(old)
    new[rng.choice(wrong, b, replace=False)] = True
    new[rng.choice(right, c, replace=False)] = False
    perm = rng.permutation(n)
    return old[perm], new[perm]


def test_accepts_real_gain():
    old, new = series(400, 0.60, b=40, c=12)
    d = mcnemar_gate(old, new, 0.05)
    assert d.accept and d.b == 40 and d.c == 12 and d.statistic == 40
    assert d.acc_new - d.acc_old == pytest.approx(28 / 400)
    assert d.p_value == pytest.approx(binomtest(40, 52, 0.5, alternative="greater").pvalue)
    assert d.p_value < 1e-4


def test_rejects_noise_and_losses():
    old, new = series(400, 0.60, b=15, c=11)  # +1% accuracy, not significant
    d = mcnemar_gate(old, new)
    assert not d.accept and d.acc_new > d.acc_old and d.p_value > 0.2
    assert not mcnemar_gate(*series(400, 0.6, b=5, c=30)).accept  # a real loss
    same = np.array([True, False, True])
    d = mcnemar_gate(same, same)
    assert not d.accept and d.p_value == 1.0 and d.b == d.c == 0


def test_exact_small_counts():
    # b=5, c=0: p = 0.5**5 = 0.03125 -> accepted at 0.05, rejected at 0.01
    old = np.zeros(10, bool)
    new = old.copy()
    new[:5] = True
    assert mcnemar_gate(old, new, 0.05).p_value == pytest.approx(0.03125)
    assert mcnemar_gate(old, new, 0.05).accept and not mcnemar_gate(old, new, 0.01).accept
    # b=4, c=0: p = 0.0625 -> rejected
    new[4] = False
    assert not mcnemar_gate(old, new, 0.05).accept
    with pytest.raises(ValueError):
        mcnemar_gate(old, new[:3])


class Holder:
    """A training state of jax arrays updated with buffer donation (like the Judge's)."""

    def __init__(self):
        self.state = {"w": jnp.arange(6.0).reshape(2, 3), "opt": {"mu": jnp.ones(3)}, "step": jnp.array(0)}
        self._step = jax.jit(lambda s, x: jax.tree.map(lambda a: a + x, s), donate_argnums=(0,))

    def snapshot(self):
        return jax.tree.map(lambda a: jnp.array(a, copy=True), self.state)

    def restore(self, s):
        self.state = jax.tree.map(lambda a: jnp.array(a, copy=True), s)

    def train(self):
        self.state = self._step(self.state, 0.37)


@pytest.mark.parametrize("gain,accepted", [(True, True), (False, False)])
def test_gated_phase_keeps_or_rolls_back_exactly(gain, accepted):
    h = Holder()
    h.train()  # some history first
    before = jax.tree.map(np.asarray, h.state)
    old, new = series(300, 0.5, b=40, c=5) if gain else series(300, 0.5, b=10, c=9)
    evals = iter([old, new])
    d, _, now = gated_phase(h.snapshot, h.restore, h.train, lambda: next(evals), alpha=0.05)
    assert d.accept is accepted
    after = jax.tree.map(np.asarray, h.state)
    same = jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), before, after))
    if accepted:
        assert not all(same)
        np.testing.assert_array_equal(now, new)
    else:
        assert all(same)  # bit-identical to the pre-phase state
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        np.testing.assert_array_equal(now, old)


def test_disabled_gate_keeps_update_but_reports():
    h = Holder()
    before = jax.tree.map(np.asarray, h.state)
    evals = iter(series(100, 0.5, b=1, c=1))
    d, _, _ = gated_phase(h.snapshot, h.restore, h.train, lambda: next(evals), enabled=False)
    assert not d.accept
    assert not np.array_equal(before["w"], np.asarray(h.state["w"]))


def test_criterion_checks_prune_constant_and_anti_correlated():
    rng = np.random.default_rng(0)
    recs, vals = [], []
    for _ in range(50):
        good_p, good_r = rng.uniform(0.6, 1), rng.uniform(0, 0.4)
        recs += [("good", good_p, good_r), ("const", 0.5, 0.5), ("anti", good_r, good_p)]
        vals += [("good", good_p), ("good", good_r), ("const", 0.5), ("const", 0.5), ("anti", good_p), ("anti", good_r)]
    recs += [("rare", 0.0, 1.0)]
    vals += [("rare", 0.0), ("rare", 1.0)]
    st = criterion_stats(recs, vals)
    assert st["good"]["acc"] == 1.0 and st["anti"]["acc"] == 0.0 and st["const"]["std"] == 0.0
    drop = criteria_to_prune(st, GateConfig(min_pairs=20))
    assert set(drop) == {"const", "anti"}  # "rare" has too few pairs to judge
    assert "constant" in drop["const"] and "preference" in drop["anti"]


def test_gate_log_jsonl(tmp_path):
    log = GateLog(tmp_path / "g" / "gate.jsonl")
    d = mcnemar_gate(*series(50, 0.5, b=10, c=0))
    log.write(phase="judge", round=1, **d.to_dict(), decision="accept")
    log.write(phase="rubricor", round=1, **d.to_dict(), decision="rollback", pruned={"x": "constant"})
    rows = [json.loads(l) for l in (tmp_path / "g" / "gate.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["judge", "rubricor"]
    assert rows[0]["p_value"] == pytest.approx(d.p_value) and rows[0]["b"] == 10 and rows[1]["pruned"] == {"x": "constant"}


def test_gate_edges_found_by_mutation_testing(tmp_path):
    """alpha must lie strictly inside (0, 1); ties count 1/2 in a criterion's accuracy; a criterion at
    exactly ``min_acc`` is pruned; the default ``min_pairs`` (20) is inclusive; a criterion with too few
    pairs does not stop the checks of the others; numpy arrays are logged as lists."""
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match="alpha"):
            mcnemar_gate([True], [False], alpha)
    old, new = np.zeros(10, bool), np.zeros(10, bool)
    new[:5] = True  # p = 0.5**5 exactly: kept only below it
    assert not mcnemar_gate(old, new, 0.03125).accept and mcnemar_gate(old, new, 0.0313).accept
    st = criterion_stats([("tie", 0.5, 0.5)] * 4, [("tie", 0.5)] * 8)
    assert st["tie"]["acc"] == 0.5
    recs = [("chance", 0.9, 0.1), ("chance", 0.1, 0.9)] * 10  # acc exactly 0.5, std > 0: pruned
    vals = [("chance", 0.9), ("chance", 0.1)] * 10
    recs += [("aaa-rare", 0.5, 0.5)]  # sorts first, too few pairs to judge
    vals += [("aaa-rare", 0.5)]
    drop = criteria_to_prune(criterion_stats(recs, vals), GateConfig())
    assert set(drop) == {"chance"} and "acc 0.500 <= 0.5" in drop["chance"]
    log = GateLog(tmp_path / "g.jsonl")
    log.write(phase="judge", values=np.arange(3), n=np.int64(4), p=np.float32(0.25))
    row = json.loads((tmp_path / "g.jsonl").read_text())
    assert row["values"] == [0, 1, 2] and row["n"] == 4 and row["p"] == 0.25
