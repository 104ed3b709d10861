"""Preference pairs on constructed trajectories with known outcomes, costs and process scores."""

import json
import math
import random

import pytest

from roro_jax.pairs import (PairsConfig, build_pairs, build_pairs_with_stats, pair_summary, pairs_from_file,
                            process_quality, process_terms, read_pairs, write_pairs)
from roro_jax.types import ESCALATE, KEEP, PreferencePair, Step, Trajectory

CONF5 = [0.9, 0.8, 0.2, 0.7, 0.95]   # step 2 is the least confident


def T(q, name, correct, esc, n=5, conf=None, large=10, meta=None, est=False):
    """Trajectory of query q by policy `name`: n steps, escalating the steps in `esc` (`large` tokens each)."""
    conf = conf if conf is not None else CONF5[:n]
    steps = [Step(index=t, text=f"s{t}", action=ESCALATE if t in esc else KEEP,
                  model="large" if t in esc else "small", small_tokens=10,
                  large_tokens=large if t in esc else 0, confidence=conf[t]) for t in range(n)]
    return Trajectory(query_id=q, sample_idx=0, policy_id=name, steps=steps, correct=correct,
                      correct_is_estimate=est, meta=dict(meta or {}))


def world():
    q1 = [T("q1", "A", True, {2}),                 # 10 large tokens, escalates the least-confident step
          T("q1", "B", False, set()),              # 0
          T("q1", "C", True, {1, 2, 3}),           # 30
          T("q1", "D", True, {0}),                 # 10, escalates a confident step
          T("q1", "K", False, {0, 1, 3, 4})]       # 40
    flat = [0.5, 0.5, 0.5]
    q2 = [T("q2", "F", True, {0}, n=3, conf=flat),            # 10
          T("q2", "G", True, {2}, n=3, conf=flat),            # 10, same quality as F (mirror image)
          T("q2", "J", True, {1}, n=3, conf=flat, large=12),  # 12: cost gap 1/6, neither clear nor small
          T("q2", "H", False, set(), n=3, conf=flat)]
    return q1 + q2


def as_set(pairs):
    return {(p.kind, p.preferred.split("/")[1], p.rejected.split("/")[1]) for p in pairs}


EXPECTED = {
    ("outcome", "A", "B"), ("outcome", "C", "B"), ("outcome", "D", "B"),
    ("outcome", "A", "K"), ("outcome", "C", "K"), ("outcome", "D", "K"),
    ("cost", "A", "C"), ("cost", "D", "C"), ("cost", "B", "K"),
    ("process", "A", "D"),
    ("outcome", "F", "H"), ("outcome", "G", "H"), ("outcome", "J", "H"),
}


# --------------------------------------------------------------------------------- process quality

def test_process_quality_hand_values():
    a, d = T("q", "A", True, {2}), T("q", "D", True, {0})
    ta = process_terms(a)
    assert ta["critical"] == 1.0 and ta["waste"] == 0.0 and ta["switch"] == 0.5 and ta["n_switches"] == 2
    assert ta["critical_source"] == "least_confident"
    td = process_terms(d)
    assert td["critical"] == 0.0 and td["waste"] == 0.75 and td["switch"] == 0.25
    assert process_quality(a) == pytest.approx(0.5 * 1 + 0.3 * 1 + 0.2 * 0.5)       # 0.9
    assert process_quality(d) == pytest.approx(0.5 * 0 + 0.3 * 0.25 + 0.2 * 0.75)    # 0.225


def test_process_quality_flags_override_confidence():
    # the small model went wrong at step 4 (a confident step): escalating it is now the critical hit
    t = T("q", "X", True, {4}, meta={"first_wrong_step": 4})
    terms = process_terms(t)
    assert terms["critical"] == 1.0 and terms["critical_source"] == "first_wrong_step"
    assert terms["waste"] == 1.0                                   # still the most confident step
    assert process_quality(t) == pytest.approx(0.5 + 0.0 + 0.2 * 0.75)
    t = T("q", "X", True, {1, 2}, meta={"wrong_steps": [1, 3]})
    assert process_terms(t)["critical"] == 0.5
    # "never wrong": no critical step, the term drops out and the weights renormalise
    t = T("q", "X", True, set(), meta={"first_wrong_step": None})
    assert process_terms(t)["critical"] is None
    assert process_quality(t) == pytest.approx(1.0)                # no waste, no switches
    with pytest.raises(ValueError, match="negative"):
        process_terms(T("q", "X", True, set(), meta={"first_wrong_step": -1}))


def test_process_quality_without_confidence_and_fewer_switches_is_better():
    t = T("q", "X", True, {1, 2}, n=6, conf=[None] * 6)
    terms = process_terms(t)
    assert terms["critical"] is None and terms["waste"] is None
    assert process_quality(t) == pytest.approx(1 - 2 / 5)            # switch term alone
    alt = T("q", "Y", True, {1, 3}, n=6, conf=[None] * 6)            # same count, 4 switches
    assert process_quality(alt) == pytest.approx(1 - 4 / 5)
    assert process_quality(alt) < process_quality(t)
    assert math.isnan(process_quality(t, weights=(1.0, 1.0, 0.0)))    # only the switch term is defined
    with pytest.raises(ValueError, match="weights"):
        process_quality(t, weights=(1.0, -1.0, 0.0))


# ------------------------------------------------------------------------------------------ pairs

def test_exact_pairs_kinds_and_margins():
    pairs, stats = build_pairs_with_stats(world(), PairsConfig(), seed=0)
    assert as_set(pairs) == EXPECTED
    assert len(pairs) == len(EXPECTED)                              # no duplicates
    m = {(p.kind, p.preferred.split("/")[1], p.rejected.split("/")[1]): p for p in pairs}
    assert m[("cost", "A", "C")].margin == pytest.approx(2 / 3)
    assert m[("cost", "B", "K")].margin == pytest.approx(1.0)
    assert m[("process", "A", "D")].margin == pytest.approx(0.9 - 0.225)
    assert all(p.margin == 1.0 for p in pairs if p.kind == "outcome")
    assert m[("process", "A", "D")].preferred == "q1/A/0" and m[("process", "A", "D")].rejected == "q1/D/0"
    # stats: F-G process tie; F-J, G-J cost gap in the dead zone (1/6 between 0.10 and 0.25)
    assert stats["process"]["candidates"] == 2 and stats["process"]["dropped_tie"] == 1
    assert stats["cost"]["dropped_tie"] == 2 and stats["cost"]["count"] == 3
    assert stats["outcome"]["count"] == 9 and stats["outcome"]["queries"] == 2
    assert stats["queries"] == 2 and stats["trajectories"] == 9


def test_reasons_are_readable():
    pairs = build_pairs(world())
    r = {p.kind: p.reason for p in pairs if p.query_id == "q1"}
    assert r["outcome"].startswith("outcome: preferred is correct")
    cost = next(p.reason for p in pairs if p.kind == "cost" and p.rejected == "q1/C/0" and p.preferred == "q1/A/0")
    assert "10 vs 30" in cost and "67% cheaper" in cost and "same outcome (correct)" in cost
    assert "quality 0.900 vs 0.225" in r["process"] and "switches 2 vs 1" in r["process"]
    assert "[least_confident]" in r["process"]


def test_tie_margin_boundary():
    q1 = [t for t in world() if t.query_id == "q1"]
    kinds = lambda cfg: {(p.kind, p.preferred.split("/")[1]) for p in build_pairs(q1, cfg)}
    assert ("process", "A") in kinds(PairsConfig(tie_margin=0.6))
    assert ("process", "A") not in kinds(PairsConfig(tie_margin=0.7))   # 0.675 is within the margin


def test_cost_margin_and_similar_cost_config():
    q2 = [t for t in world() if t.query_id == "q2"]
    # with a 10% cost margin the 12-vs-10 gap (16.7%) is a clear cost difference
    got = as_set(build_pairs(q2, PairsConfig(cost_margin=0.1, similar_cost=0.05)))
    assert {("cost", "F", "J"), ("cost", "G", "J")} <= got
    with pytest.raises(ValueError, match="similar_cost"):
        PairsConfig(cost_margin=0.2, similar_cost=0.2)
    with pytest.raises(ValueError, match="cost_measure"):
        PairsConfig(cost_measure="flops")
    only = build_pairs(world(), PairsConfig(outcome=False, process=False))
    assert {p.kind for p in only} == {"cost"}


def test_never_pairs_across_queries():
    # every query has the same policies; a second copy of q1 under another query id
    ts = world() + [T("q9", t.policy_id, t.correct, {s.index for s in t.steps if s.action}) for t in world()
                    if t.query_id == "q1"]
    pairs = build_pairs(ts)
    for p in pairs:
        assert p.preferred.split("/")[0] == p.query_id == p.rejected.split("/")[0]
    assert sum(p.query_id == "q9" for p in pairs) == sum(p.query_id == "q1" for p in pairs) == 10


def test_ungraded_trajectories():
    ts = world() + [T("q1", "U1", None, set()), T("q1", "U2", None, {0, 1, 2, 3})]
    pairs, stats = build_pairs_with_stats(ts)
    assert as_set(pairs) == EXPECTED and stats["excluded_ungraded"] == 2
    pairs = build_pairs(ts, PairsConfig(pair_ungraded=True))
    extra = as_set(pairs) - EXPECTED
    assert extra == {("cost", "U1", "U2")}                        # never an outcome pair, never with graded
    assert "same outcome (ungraded)" in next(p.reason for p in pairs if "U1" in p.preferred)


def test_estimated_outcomes_are_flagged():
    ts = [T("q", "A", True, {2}, est=True), T("q", "B", False, set(), est=True)]
    (p,) = build_pairs(ts)
    assert "(outcomes estimated)" in p.reason


def test_deterministic_and_order_independent():
    ts = world()
    ref = [p.to_dict() for p in build_pairs(ts, seed=3)]
    for s in range(3):
        sh = ts[:]
        random.Random(s).shuffle(sh)
        assert [p.to_dict() for p in build_pairs(sh, seed=3)] == ref


def test_caps_are_seeded_subsamples():
    many = []
    for q in ("a", "b"):
        for i in range(6):
            many.append(T(q, f"ok{i}", True, set(range(i)), n=6, conf=[0.1 * k for k in range(6)]))
            many.append(T(q, f"bad{i}", False, set(range(i)), n=6, conf=[0.1 * k for k in range(6)]))
    full = build_pairs(many)
    n_out = sum(p.kind == "outcome" for p in full if p.query_id == "a")
    assert n_out == 36
    cfg = PairsConfig(max_per_kind=5, max_per_query=8)
    capped, stats = build_pairs_with_stats(many, cfg, seed=1)
    for q in ("a", "b"):
        mine = [p for p in capped if p.query_id == q]
        assert len(mine) <= 8
        for k in ("outcome", "cost", "process"):
            assert sum(p.kind == k for p in mine) <= 5
    full_keys = {json.dumps(p.to_dict(), sort_keys=True) for p in full}
    assert all(json.dumps(p.to_dict(), sort_keys=True) in full_keys for p in capped)   # a subset
    assert stats["outcome"]["dropped_cap"] == 2 * (36 - 5)
    again = [p.to_dict() for p in build_pairs(list(reversed(many)), cfg, seed=1)]
    assert again == [p.to_dict() for p in capped]
    assert [p.to_dict() for p in build_pairs(many, cfg, seed=2)] != again
    # a query's subsample does not depend on which other queries are present
    only_a = [p.to_dict() for p in build_pairs([t for t in many if t.query_id == "a"], cfg, seed=1)]
    assert only_a == [p.to_dict() for p in capped if p.query_id == "a"]


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="duplicate trajectory id"):
        build_pairs([T("q", "A", True, set()), T("q", "A", False, set())])


def test_summary_and_jsonl_roundtrip(tmp_path):
    pairs = build_pairs(world())
    s = pair_summary(pairs)
    assert s["cost"]["count"] == 3 and s["cost"]["margin_min"] == pytest.approx(2 / 3)
    assert s["process"] == {"count": 1, "queries": 1, "margin_mean": pytest.approx(0.675),
                            "margin_min": pytest.approx(0.675), "margin_max": pytest.approx(0.675)}
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert [p.to_dict() for p in read_pairs(path)] == [p.to_dict() for p in pairs]
    bad = tmp_path / "bad.jsonl"
    row = pairs[0].to_dict()
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "kind": "vibes"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: kind must be"):
        read_pairs(bad)
    bad.write_text(json.dumps({**row, "rejected": row["preferred"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: preferred and rejected"):
        read_pairs(bad)
    bad.write_text(json.dumps({k: v for k, v in row.items() if k != "kind"}) + "\n")
    with pytest.raises(ValueError, match=r"missing field"):
        read_pairs(bad)
    assert isinstance(read_pairs(path)[0], PreferencePair)


def test_pairs_from_file(tmp_path):
    src = tmp_path / "trajs.jsonl"
    src.write_text("".join(t.to_json() + "\n" for t in world()))
    stats = pairs_from_file(src, tmp_path / "out" / "pairs.jsonl", PairsConfig(), seed=0)
    assert as_set(read_pairs(tmp_path / "out" / "pairs.jsonl")) == EXPECTED
    assert json.loads((tmp_path / "out" / "pairs.jsonl.stats.json").read_text()) == json.loads(json.dumps(stats))
    src.write_text(world()[0].to_json() + "\n" + '{"query_id": "q"}\n')
    with pytest.raises(ValueError, match=r"trajs.jsonl:2: not a trajectory"):
        pairs_from_file(src, tmp_path / "x.jsonl")


def test_balance_outcome_by_cost_matches_dearer_and_cheaper_preferred():
    """balance_outcome="cost": per query, as many outcome pairs prefer the dearer route as the cheaper one."""
    q3 = [T("q3", "X", True, {0}), T("q3", "Y", True, {0, 1}),       # 10 and 20 large tokens, correct
          T("q3", "W", False, set()), T("q3", "V", False, {0}, large=15), T("q3", "Z", False, {1})]  # 0, 15, 10
    trajs = world() + q3
    plain = as_set(build_pairs(trajs))
    pairs, stats = build_pairs_with_stats(trajs, PairsConfig(balance_outcome="cost"), seed=3)
    got = as_set(pairs)
    # q1: 3 dearer-preferred (A,C,D over B) and 3 cheaper-preferred (over K): all kept
    assert {p for p in plain if p[0] == "outcome" and p[1] in "ACD"} <= got
    # q2: every outcome pair prefers the dearer route and none the cheaper one: all dropped
    assert not {p for p in got if p[0] == "outcome" and p[1] in "FGJ"}
    # q3: dearer-preferred X>W, Y>W, Y>V, Y>Z; cheaper-preferred X>V; equal cost X~Z (kept)
    q3_out = {p for p in got if p[0] == "outcome" and p[1] in "XY"}
    assert ("outcome", "X", "V") in q3_out and ("outcome", "X", "Z") in q3_out
    assert len(q3_out & {("outcome", "X", "W"), ("outcome", "Y", "W"), ("outcome", "Y", "V"),
                         ("outcome", "Y", "Z")}) == 1 and len(q3_out) == 3
    assert stats["outcome"]["dropped_balance"] == 3 + 3
    # the other kinds are untouched
    assert {p for p in got if p[0] != "outcome"} == {p for p in plain if p[0] != "outcome"}
    with pytest.raises(ValueError, match="balance_outcome"):
        PairsConfig(balance_outcome="share")


# ------------------------------------------------------------------------------------ process labels

def _route(name, texts, esc, conf=(0.9, 0.2, 0.8)):
    """A correct route of the toy problem "5 - 3 + 7" (reference steps "5 - 3 = 2", "2 + 7 = 9", then
    "Answer: 9"); the small model went wrong on step 1 (meta wrong_steps); one escalated step, 10 tokens."""
    steps = [Step(index=t, text=x, action=ESCALATE if t in esc else KEEP, model="large" if t in esc else "small",
                  small_tokens=10, large_tokens=10 if t in esc else 0, confidence=conf[t])
             for t, x in enumerate(texts)]
    return Trajectory(query_id="toy-1", sample_idx=0, policy_id=name, steps=steps, correct=True,
                      meta={"wrong_steps": [1]})


TOY_Q = {"toy-1": "5 - 3 + 7"}
# P keeps every reference step but escalated the confident step 0 and not the critical step 1:
#   quality = 0.5·0 + 0.3·(1 − 1.0) + 0.2·(1 − 1/2) = 0.1; checkpoints 3/3.
# Q escalated the critical step 1 and still kept a wrong first step (a lucky route):
#   quality = 0.5·1 + 0.3·(1 − 0) + 0.2·(1 − 2/2) = 0.8; checkpoints 2/3.
P = _route("P", ["5 - 3 = 2", "2 + 7 = 9", "Answer: 9"], {0})
Q = _route("Q", ["5 - 3 = 3", "2 + 7 = 9", "Answer: 9"], {1})


def test_process_labels_order_one_pair_oppositely():
    """The same two routes form a process pair under either label, preferred in opposite directions, with
    the hand-computed margins; the default label is ``quality``."""
    assert process_quality(P) == pytest.approx(0.1) and process_quality(Q) == pytest.approx(0.8)
    (dflt,) = build_pairs([P, Q])
    assert PairsConfig().process_label == "quality"
    assert (dflt.kind, dflt.preferred, dflt.rejected) == ("process", Q.traj_id, P.traj_id)
    assert dflt.margin == pytest.approx(0.7) and "quality 0.800 vs 0.100" in dflt.reason
    (ck,) = build_pairs([P, Q], PairsConfig(process_label="checkpoints"), queries=TOY_Q)
    assert (ck.kind, ck.preferred, ck.rejected) == ("process", P.traj_id, Q.traj_id)
    assert ck.margin == pytest.approx(1 / 3) and "checkpoints passed 1.000 vs 0.667" in ck.reason


def test_process_label_default_is_quality_label_and_tie_margin_applies():
    """The default builds exactly what an explicit quality label builds; under checkpoints, routes that keep
    the same reference steps tie (no pair), and a tie margin above the checkpoint gap drops the pair."""
    from roro_jax.pairs import quality_label

    trajs = world()
    assert build_pairs(trajs) == build_pairs(trajs, label=quality_label((0.5, 0.3, 0.2)))
    P2 = _route("P2", ["5 - 3 = 2", "2 + 7 = 9", "Answer: 9"], {1})  # same checkpoints as P, other quality
    pairs, stats = build_pairs_with_stats([P, P2], PairsConfig(process_label="checkpoints"), queries=TOY_Q)
    assert pairs == [] and stats["process"]["dropped_tie"] == 1
    assert build_pairs([P, P2]) != []                                # quality tells them apart
    assert build_pairs([P, Q], PairsConfig(process_label="checkpoints", tie_margin=0.4), queries=TOY_Q) == []


def test_process_label_checkpoints_needs_toy_queries(tmp_path, capsys):
    """Without query texts, or for a query that is not a toy problem, one ``roro: error:`` line names the key."""
    from roro_jax.cli import main
    from roro_jax.types import InputError

    with pytest.raises(InputError, match="pairs.process_label"):
        build_pairs([P, Q], PairsConfig(process_label="checkpoints"))
    with pytest.raises(KeyError, match="unknown process label 'nope'"):
        build_pairs([P, Q], PairsConfig(process_label="nope"))
    traj = tmp_path / "t.jsonl"
    traj.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in (P, Q)))
    qf = tmp_path / "q.json"
    qf.write_text(json.dumps({"toy-1": "Which city is the capital of France?"}))
    argv = ["pairs", "--trajectories", str(traj), "--out", str(tmp_path / "p.jsonl"), "--queries", str(qf),
            "pairs.process_label=checkpoints"]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("roro:")]
    assert len(err) == 1 and err[0].startswith("roro: error: config key 'pairs.process_label'") \
        and "is not a toy problem" in err[0], err
    qf.write_text(json.dumps(TOY_Q))
    assert main(argv) == 0
    (p,) = read_pairs(tmp_path / "p.jsonl")
    assert (p.preferred, p.rejected) == (P.traj_id, Q.traj_id)
