"""The alternating loop (``roro_jax.rubric.loop``) by its behaviour: the Rubricor's GRPO phase moves it
toward rubrics under which the frozen Judge orders held-out pairs right; a rejected phase leaves the
Rubricor, the Judge and the rubric book bit-identical; criteria that the Judge scores as constant are
pruned from the book; a run records its phases, gate decisions and checkpoints as they happened.

The tests run cheapest first: under ``pytest -x`` (the mutation run of ``make mutants``) a change that a fast
test catches stops there."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from rubric_testkit import TINY, make_traj

from roro_jax.rl.checkpoint import Checkpointer
from roro_jax.rubric.format import criterion_key, format_rubric, parse_rubric
from roro_jax.rubric.gate import GateConfig
from roro_jax.rubric.judge import Judge, JudgeConfig, pair_correct
from roro_jax.rubric.lm import LMSpec
from roro_jax.rubric.loop import (RubricBook, RubricConfig, RubricData, TeacherRubricWarning, accuracy_report, by_query,
                                  grpo_step, make_data, prune_book, run_alternating, run_no_rubric, write_rubrics)
from roro_jax.rubric.rubricor import Rubricor, RubricorConfig
from roro_jax.rubric.serialize import SerializeConfig, probe_trajectory, query_summary
from roro_jax.rubric.teacher import get_teacher, register_teacher
from roro_jax.types import Criterion, PreferencePair, Rubric

GOOD, BAD = "1. [w=1] Escalates the drop.\n", "1. [w=1] Keeps every step.\n"


def routes(prefix: str, n: int, *, flip: bool = False, offset: int = 0, bad_keeps_all: bool = False):
    """n queries; each has a route escalating its low-confidence step ("good") and one escalating a confident
    step ("bad"; with ``bad_keeps_all``, one escalating no step); the pair prefers the good one (the bad one
    with ``flip``)."""
    trajs, pairs, queries = [], [], {}
    for i in range(n):
        q = f"{prefix}{i}"
        d = 1 + (i + offset) % 4
        confs = [0.95] * 6
        confs[d] = 0.2 + 0.03 * (i % 5)
        good = make_traj(q, "good", confs, esc=(d,))
        bad = make_traj(q, "bad", confs, esc=() if bad_keeps_all else ((d + 2) % 6,))
        pref, rej = (bad, good) if flip else (good, bad)
        trajs += [good, bad]
        pairs.append(PreferencePair(q, pref.traj_id, rej.traj_id, "process", 0.5, "test"))
        queries[q] = f"Problem {i + offset}"
    return trajs, pairs, queries


def leaves_bytes(tree):
    return [(np.asarray(x).dtype, np.asarray(x).tobytes()) for x in jax.tree.leaves(tree)]


def test_accuracy_report_per_kind_and_macro():
    pairs = [PreferencePair("q", "a", "b", k) for k in ("outcome", "outcome", "process", "cost", "cost", "cost")]
    rep = accuracy_report(np.array([True, False, True, True, True, False]), pairs)
    assert rep["acc"] == pytest.approx(4 / 6) and rep["n"] == 6
    assert (rep["acc_outcome"], rep["n_outcome"]) == (0.5, 2) and (rep["acc_process"], rep["n_process"]) == (1.0, 1)
    assert rep["acc_cost"] == pytest.approx(2 / 3) and rep["acc_macro"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)


def test_make_data_splits_by_query_and_keeps_the_query_texts():
    trajs, pairs, queries = routes("d", 20)
    extra = make_traj("d0", "other", [0.9] * 6)  # a second pair for d0: both of its pairs go to d0's split
    pairs = pairs + [PreferencePair("d0", pairs[0].preferred, extra.traj_id, "process", 0.5, "test")]
    cfg = RubricConfig(split=[0.6, 0.2, 0.2])
    data = make_data(trajs + [extra], pairs, queries, cfg)
    qs = [set(data.split_queries(s)) for s in ("train", "val", "test")]
    assert [len(x) for x in qs] == [12, 4, 4] and set.union(*qs) == set(queries)
    assert sum(len(data.pairs_of(s)) for s in ("train", "val", "test")) == len(pairs)
    d0_splits = [s for s in ("train", "val", "test") if any(p.query_id == "d0" for p in data.pairs_of(s))]
    assert len(d0_splits) == 1 and sum(p.query_id == "d0" for p in data.pairs_of(d0_splits[0])) == 2
    assert data.queries == queries and data.query_ids == sorted(queries)
    assert make_data(trajs, pairs[:20], None, cfg).queries == {q: "" for q in queries}  # no texts given
    # a pair naming a trajectory that was not given (here its rejected one) is refused, not dropped
    with pytest.raises(ValueError, match="1 pairs name trajectories that were not given"):
        make_data(trajs, pairs, queries, cfg)


# ------------------------------------------------------------------------------------ criterion pruning
def test_prune_book_drops_a_constant_criterion_from_every_rubric(tiny_judge_cfg):
    """The untrained Judge (zero score head) gives every criterion probability 1/2 on every route: a
    criterion shared by all queries, with enough pairs, is constant and is pruned from each rubric; the
    query-specific criteria (too few pairs to judge) stay, reweighted."""
    trajs, pairs, queries = routes("q", 10)
    cfg = RubricConfig(judge=tiny_judge_cfg, split=[1.0, 0.0, 0.0], gate=GateConfig(min_pairs=5))
    data = make_data(trajs, pairs, queries, cfg)
    assert len(data.train) == 10
    book = RubricBook({q: parse_rubric(f"1. [w=0.5] Escalates the drop.\n2. [w=0.5] Mentions query {q}.\n", q).rubric
                       for q in queries})
    judge = Judge(tiny_judge_cfg, cfg.serialize, max_criteria=cfg.max_criteria)
    drop = prune_book(book, judge, data, cfg)
    assert set(drop) == {criterion_key("Escalates the drop.")} and "constant" in drop[criterion_key("Escalates the drop.")]
    for q, r in book.rubrics.items():
        assert [c.text for c in r.criteria] == [f"Mentions query {q}."] and r.criteria[0].weight == pytest.approx(1.0)
    # with too few pairs to judge, nothing is pruned
    book2 = RubricBook({q: parse_rubric(f"1. [w=0.5] Escalates the drop.\n2. [w=0.5] Mentions query {q}.\n", q).rubric
                        for q in queries})
    assert prune_book(book2, judge, data, dataclasses.replace(cfg, gate=GateConfig(min_pairs=11))) == {}
    assert all(len(r.criteria) == 2 for r in book2.rubrics.values())


# ------------------------------------------------------------------------------------ the no-rubric baseline
def test_no_rubric_judge_trains_reads_no_rubric_and_reports_each_split_on_its_own_pairs(tiny_judge_cfg):
    trajs, pairs, queries = routes("n", 30)
    cfg = RubricConfig(judge=dataclasses.replace(tiny_judge_cfg, steps=3, lr=3e-3), rounds=2, split=[0.6, 0.2, 0.2])
    data = make_data(trajs, pairs, queries, cfg)
    assert data.val and data.test
    out = run_no_rubric(cfg, data, log=lambda s: None)
    assert out["steps"] == cfg.rounds * cfg.judge.steps == 6
    judge = out["judge"]
    assert judge.cfg.use_rubric is False
    for split, ps in (("val", data.val), ("test", data.test)):
        correct = pair_correct(judge, ps, data.by_id, data.queries, None)[0]
        assert out[split]["n"] == len(ps) and out[split]["acc"] == pytest.approx(float(correct.mean())), split
    fresh = Judge(dataclasses.replace(cfg.judge, use_rubric=False), cfg.serialize, max_criteria=cfg.max_criteria,
                  seed=cfg.seed)
    untrained = leaves_bytes(fresh.state.params)
    assert leaves_bytes(judge.state.params) != untrained  # it was trained
    # ... as Judge.train_steps on the training pairs from the run's seed; the kept loss is its last step's
    hist = fresh.train_steps(data.train, data.by_id, data.queries, None, steps=6, rng=np.random.default_rng(cfg.seed))
    assert leaves_bytes(fresh.state.params) == leaves_bytes(judge.state.params)
    assert out["train_loss"] == hist[-1]["loss"] and hist[-1]["loss"] != hist[1]["loss"]
    none = run_no_rubric(cfg, data, steps=0, log=lambda s: None)
    assert none["steps"] == 0 and leaves_bytes(none["judge"].state.params) == untrained


# ------------------------------------------------------------------------------------ batch edges
def test_write_rubrics_covers_every_query_past_one_generation_batch():
    """``write_rubrics`` generates in batches of 64 prompts: 70 queries (one full batch and a partial one)
    each get the rubric written from their own prompt, the same one a single-query call writes."""
    rc = RubricorConfig(model=TINY, max_new_tokens=8)
    rubricor = Rubricor(rc, SerializeConfig(), RubricConfig(rubricor=rc).limits(), seed=0)
    trajs, _, queries = routes("w", 70)
    by_q: dict[str, list] = {}
    for t in trajs:
        by_q.setdefault(t.query_id, []).append(t)
    data = RubricData(by_id={t.traj_id: t for t in trajs}, queries=queries,
                      summaries={q: query_summary(ts) for q, ts in by_q.items()},
                      probes={q: probe_trajectory(ts) for q, ts in by_q.items()}, train=[], val=[], test=[])
    qids = sorted(queries)
    out = write_rubrics(rubricor, data, qids)
    assert sorted(out) == qids
    for q in (qids[0], qids[63], qids[64], qids[-1]):
        alone = rubricor.write([rubricor.prompt_ids(data.queries[q], data.summaries[q])], [q])[0]
        assert (out[q].reason, out[q].rubric) == (alone.reason, alone.rubric), q


# ------------------------------------------------------------------------------------ what a run records
@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """One round with ``out_dir`` set, where the gate's decisions are known in advance: the untrained Judge
    ties every pair (a zero score head), so the Judge phase, which learns routes that differ by one
    escalation, is accepted; the Rubricor writes at most 8 tokens, too few for any rubric, so every rubric
    it writes or samples is malformed, the book stays the fallback one, held-out correctness does not
    move and its phase is rolled back (pruning off)."""
    trajs, pairs, queries = routes("c", 30, bad_keeps_all=True)
    rc = RubricorConfig(model=TINY, sft_steps=0, grpo_steps=2, grpo_queries=2, group_size=2, max_new_tokens=8)
    out = tmp_path_factory.mktemp("loop")
    cfg = RubricConfig(judge=JudgeConfig(model=TINY, batch_pairs=4, steps=12, lr=1e-2), rubricor=rc, rounds=1,
                       sft=False, split=[0.6, 0.2, 0.2], gate=GateConfig(prune=False), seed=3, out_dir=str(out))
    data = make_data(trajs, pairs, queries, cfg)
    unparsable = set(data.split_queries("train")[:2])
    profile = get_teacher("profile")

    def teacher(q, *args, **kw):  # the profile teacher, but two training queries get a rubric without words
        return Rubric(q, [Criterion("!!", 1.0)]) if q in unparsable else profile(q, *args, **kw)

    register_teacher("test_partly_unparsable", teacher)
    cfg = dataclasses.replace(cfg, teacher="test_partly_unparsable")
    lines: list[str] = []
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_alternating(cfg, data, log=lines.append)
    return cfg, data, res, lines, time.time() - t0, [w for w in caught if w.category is TeacherRubricWarning]


def test_a_run_records_its_phases_gate_log_and_checkpoints_as_they_happened(recorded_run):
    cfg, data, res, lines, wall, teacher_warnings = recorded_run
    judge, book = res["judge"], res["book"]
    assert [(r["phase"], r["round"]) for r in res["phases"]] == [("init", 0), ("judge", 1), ("rubricor", 1)]
    assert [(g["phase"], g["round"], g["accept"]) for g in res["gate"]] == [("judge", 1, True), ("rubricor", 1, False)]
    # held-out correctness is threaded through the phases: the Judge phase starts from the untrained Judge's
    # (every pair tied, so none right), the Rubricor phase from the accepted Judge's
    jg, rg = res["gate"]
    assert jg["n"] == rg["n"] == len(data.val) and jg["acc_old"] == 0.0 and jg["acc_new"] > 0.8
    assert rg["acc_old"] == rg["acc_new"] == jg["acc_new"] and rg["pruned"] == {}
    # each record reports the test pairs under the state in place after its phase: the untrained Judge ties
    # them all; after the accepted Judge phase, the final Judge and book (the Rubricor phase was undone)
    final = accuracy_report(pair_correct(judge, data.test, data.by_id, data.queries, book.rubrics)[0], data.test)
    init, jrec, rrec = res["phases"]
    assert init["test"] == {**final, "acc": 0.0, "acc_process": 0.0, "acc_macro": 0.0} and final["acc"] > 0.8
    assert jrec["test"] == final and rrec["test"] == final
    assert jrec["gate"] == {k: v for k, v in jg.items() if k not in ("phase", "round")}
    # the Judge phase is Judge.train_steps on the training pairs under the book's rubrics, from the run's
    # seed; its record keeps that training's last loss
    twin = Judge(cfg.judge, cfg.serialize, max_criteria=cfg.max_criteria, seed=cfg.seed)
    hist = twin.train_steps(data.train, data.by_id, data.queries, book.fallback, steps=cfg.judge.steps,
                            rng=np.random.default_rng(cfg.seed))
    assert leaves_bytes(twin.state.params) == leaves_bytes(judge.state.params)
    assert jrec["train_loss"] == hist[-1]["loss"] and hist[-1]["loss"] != hist[1]["loss"]
    # every rubric written or sampled is malformed: the book is the fallback one, each GRPO step's samples
    # all get the malformed reward
    assert res["malformed_initial"] == 1.0 and all(r["malformed"] == 1.0 for r in res["phases"])
    assert book.rubrics == book.fallback and set(book.source.values()) == {"fallback"}
    assert rrec["malformed_sampled"] == [1.0] * cfg.rubricor.grpo_steps
    assert rrec["reward_mean"] == [cfg.rubricor.malformed_reward] * cfg.rubricor.grpo_steps
    test_q = data.split_queries("test")
    assert res["rubrics_example"] == {q: format_rubric(book.rubrics[q]) for q in test_q[:3]}
    times = [r["time_s"] for r in res["phases"]] + [res["time_s"]]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= wall
    # the gate log (JSONL) holds the same decisions; the accepted Judge phase, and only it, is checkpointed,
    # with the Judge state that the run ended with (nothing after it changed the Judge)
    out = Path(cfg.out_dir)
    logged = [json.loads(x) for x in (out / "gate.jsonl").read_text().splitlines()]
    assert [(g["phase"], g["round"], g["decision"]) for g in logged] == [("judge", 1, "accept"),
                                                                        ("rubricor", 1, "rollback")]
    for g, r in zip(logged, res["gate"]):
        assert {k: g[k] for k in r} == r
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["judge"]
    ck = Checkpointer(out / "checkpoints" / "judge")
    try:
        assert ck.all_steps() == [1]
        state, meta = ck.restore(judge.state)
    finally:
        ck.close()
    assert (meta["round"], meta["phase"]) == (1, "judge")
    assert leaves_bytes(state.params) == leaves_bytes(judge.state.params)
    # the log says the same, one line per phase
    assert len(lines) == 3
    for line, r in zip(lines, res["phases"]):
        assert f"round {r['round']} {r['phase']}: test acc {r['test']['acc']:.3f}" in line
    assert "gate ACCEPT" in lines[1] and "gate reject" in lines[2]
    assert all(0 <= int(re.search(r"\((\d+)s\)$", line).group(1)) <= wall + 1 for line in lines)  # elapsed
    # the two teacher rubrics that do not parse are counted and warned about, once
    assert res["teacher_unparsed"] == 2 and len(teacher_warnings) == 1
    n_train = len(data.split_queries("train"))
    assert f"2 of {n_train} teacher rubrics do not parse" in str(teacher_warnings[0].message)


# ------------------------------------------------------------------------------------ GRPO step, several pairs
def three_pair_routes(n: int):
    """n queries, each with three routes (the low-confidence step escalated, no step escalated, a confident
    step escalated) and the three pairs among them."""
    trajs, pairs, queries = [], [], {}
    for i in range(n):
        q = f"m{i}"
        d = 1 + i % 4
        confs = [0.95] * 6
        confs[d] = 0.2
        good, none_, bad = (make_traj(q, "good", confs, esc=(d,)), make_traj(q, "none", confs),
                            make_traj(q, "bad", confs, esc=((d + 2) % 6,)))
        trajs += [good, none_, bad]
        pairs += [PreferencePair(q, a.traj_id, b.traj_id, "process", 0.5, "test")
                  for a, b in ((good, none_), (good, bad), (none_, bad))]
        queries[q] = f"Problem {i}"
    return trajs, pairs, queries


def test_grpo_step_rewards_each_sample_with_its_own_pairs_when_a_query_has_several():
    """With three reward pairs per query, each sampled rubric's reward is the frozen Judge's pairwise
    accuracy on that query's pairs read under that rubric (recomputed here pair by pair), and those rewards
    are what the GRPO update receives."""
    trajs, pairs, queries = three_pair_routes(6)
    rc = RubricorConfig(model=TINY, sft_lr=2e-2, sft_batch=8, max_new_tokens=24, group_size=4, grpo_queries=3,
                        reward_pairs=3, temperature=1.0)
    cfg = RubricConfig(rubricor=rc, judge=JudgeConfig(model=TINY, batch_pairs=6, lr=3e-3), split=[1.0, 0.0, 0.0],
                       max_criteria=2)
    data = make_data(trajs, pairs, queries, cfg)
    judge = Judge(cfg.judge, cfg.serialize, max_criteria=cfg.max_criteria)
    good = parse_rubric(GOOD, "q").rubric
    # a partly trained Judge: its scores differ between routes and rubrics, so a misaligned slice shows
    judge.train_steps(data.train[:9], data.by_id, data.queries, {q: good for q in queries}, steps=15,
                      rng=np.random.default_rng(0))
    rubricor = Rubricor(rc, SerializeConfig(), cfg.limits(), seed=0)
    qs = sorted(queries)
    prompts = [rubricor.prompt_ids(data.queries[q], data.summaries[q]) for q in qs]
    rubricor.sft([p for p in prompts for _ in range(4)], [GOOD, BAD, "1. [w=1] Escalates the drop early.\n", BAD]
                 * len(prompts), steps=40, rng=np.random.default_rng(0))
    seen = {}
    real_generate, real_update = rubricor.generate, rubricor.grpo_update

    def generate(prompts_, **kw):
        seen["outs"] = real_generate(prompts_, **kw)
        return seen["outs"]

    def grpo_update(prompts_, completions, rewards):
        seen["rewards"] = list(rewards)
        return real_update(prompts_, completions, rewards)

    rubricor.generate, rubricor.grpo_update = generate, grpo_update
    batch = qs[:3]
    m = grpo_step(rubricor, judge, data, batch, by_query(data.train), cfg, np.random.default_rng(3))
    sample_q = [q for q in batch for _ in range(rc.group_size)]
    expected, swapped = [], []
    for (_, text), q in zip(seen["outs"], sample_q):
        pr = parse_rubric(text, q, cfg.limits())
        if not pr.ok:
            expected.append(rc.malformed_reward)
            swapped.append(rc.malformed_reward)
            continue
        qp = by_query(data.train)[q]
        sp = np.array([judge.scores([(data.queries[q], pr.rubric, data.by_id[p.preferred])])[0] for p in qp])
        sr = np.array([judge.scores([(data.queries[q], pr.rubric, data.by_id[p.rejected])])[0] for p in qp])
        expected.append(float(np.mean((sp > sr) + 0.5 * (sp == sr))))
        swapped.append(float(np.mean((sp[::-1] > sr) + 0.5 * (sp[::-1] == sr))))
    assert sum(e != rc.malformed_reward for e in expected) >= 4  # most samples are well-formed rubrics
    assert m["malformed"] == pytest.approx(expected.count(rc.malformed_reward) / len(expected))
    assert seen["rewards"] == pytest.approx(expected, abs=1e-6)
    assert m["reward_mean"] == pytest.approx(float(np.mean(expected)), abs=1e-6)
    # the check can tell pairs apart: pairing each preferred route with another pair's rejected one differs
    assert not np.allclose(expected, swapped)


# ------------------------------------------------------------------------------------ gate rollback
def _small_loop_cfg(**gate):
    rc = RubricorConfig(model=TINY, sft_steps=3, grpo_steps=1, grpo_queries=2, group_size=2, max_new_tokens=16)
    return RubricConfig(judge=JudgeConfig(model=TINY, batch_pairs=4, steps=0, lr=1e-2), rubricor=rc, rounds=1,
                        sft=True, split=[0.6, 0.2, 0.2], gate=GateConfig(min_pairs=10, **gate), max_criteria=4)


def test_rejected_rubricor_phase_leaves_rubricor_judge_and_book_bit_identical():
    """A Rubricor phase that the gate rejects (alpha below any attainable p-value) is rolled back: the
    Rubricor (parameters and optimiser state), the Judge and every rubric, source and reason are exactly
    those before the phase (the loop stopped after round 0). The same phase with the gate disabled changes
    both the Rubricor and the book, so the equality is the rollback's doing."""
    trajs, pairs, queries = routes("q", 20)
    cfg = _small_loop_cfg(alpha=1e-12)
    data = make_data(trajs, pairs, queries, cfg)
    quiet = lambda s: None  # noqa: E731

    lines: list[str] = []
    t0 = time.time()
    before = run_alternating(dataclasses.replace(cfg, rounds=0), data, log=lines.append)
    wall = time.time() - t0
    # the Rubricor's SFT on the teacher rubrics ran first: its first and last loss, kept and logged with the
    # time since the start
    first, last = before["sft_loss"]
    assert last < first and f"SFT loss {first:.3f} -> {last:.3f}" in lines[0]
    assert 0 <= int(re.search(r"\((\d+)s\)$", lines[0]).group(1)) <= wall + 1
    rejected = run_alternating(cfg, data, log=quiet)
    kept = run_alternating(dataclasses.replace(cfg, gate=dataclasses.replace(cfg.gate, enabled=False)), data, log=quiet)
    assert [g["accept"] for g in rejected["gate"]] == [False, False]
    assert [(r["phase"], r["round"]) for r in rejected["phases"]] == [("init", 0), ("judge", 1), ("rubricor", 1)]
    assert [g["phase"] for g in rejected["gate"]] == ["judge", "rubricor"]

    def book_state(res):
        b = res["book"]
        return ({q: (r.criteria, r.raw) for q, r in b.rubrics.items()}, b.source, b.reasons)

    assert book_state(rejected) == book_state(before)
    assert leaves_bytes(rejected["rubricor"].state) == leaves_bytes(before["rubricor"].state)
    assert leaves_bytes(rejected["judge"].state) == leaves_bytes(before["judge"].state)
    # the control: kept, the phase changed the Rubricor's state and pruned the book
    assert leaves_bytes(kept["rubricor"].state) != leaves_bytes(before["rubricor"].state)
    assert book_state(kept) != book_state(before) and kept["gate"][1]["pruned"]


# ------------------------------------------------------------------------------------ Rubricor GRPO phase
@pytest.fixture(scope="module")
def rubric_world():
    """A frozen Judge that orders pairs right when it reads GOOD and wrong when it reads BAD (trained so on
    other queries: the order it gives depends on the rubric text), and a Rubricor fine-tuned to write BAD
    3 times out of 5 and GOOD otherwise, for training queries ``r*`` and held-out queries ``h*``.

    Each pair sets a route that escalates the query's low-confidence step against one that keeps every
    step: the difference the two rubrics name. (With a confident step escalated instead, the tiny Judge
    learned the rubric-dependent order on other queries for some float roundings and seeds and not for
    others: 8 simulated devices vs 1 changed the outcome.)"""
    good, bad = parse_rubric(GOOD, "q").rubric, parse_rubric(BAD, "q").rubric
    tg, pg, qg = routes("jg", 12, bad_keeps_all=True)
    tb, pb, qb = routes("jb", 12, flip=True, bad_keeps_all=True)
    tr, pr, qr = routes("r", 8, offset=40, bad_keeps_all=True)
    th, ph, qh = routes("h", 8, offset=20, bad_keeps_all=True)
    by_id = {t.traj_id: t for t in tg + tb + tr + th}
    queries = {**qg, **qb, **qr, **qh}
    judge = Judge(JudgeConfig(model=LMSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                           max_position_embeddings=256), batch_pairs=8, lr=3e-3),
                  SerializeConfig(), max_criteria=2)
    judge.train_steps(pg + pb, by_id, queries, {**{q: good for q in qg}, **{q: bad for q in qb}}, steps=80,
                      rng=np.random.default_rng(0))
    by_q: dict[str, list] = {}
    for t in tr + th:
        by_q.setdefault(t.query_id, []).append(t)
    data = RubricData(by_id=by_id, queries={q: queries[q] for q in by_q},
                      summaries={q: query_summary(ts) for q, ts in by_q.items()},
                      probes={q: probe_trajectory(ts) for q, ts in by_q.items()}, train=pr, val=[], test=ph)
    rc = RubricorConfig(model=LMSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                     max_position_embeddings=256),
                        sft_lr=2e-2, sft_batch=8, max_new_tokens=32, group_size=4, grpo_queries=4, lr=3e-3,
                        grpo_epochs=2, reward_pairs=1)
    cfg = RubricConfig(rubricor=rc, max_criteria=2)
    rubricor = Rubricor(rc, SerializeConfig(), cfg.limits(), seed=0)
    prompts = [rubricor.prompt_ids(data.queries[q], data.summaries[q]) for q in sorted(by_q)]
    rubricor.sft([p for p in prompts for _ in range(5)], [GOOD, GOOD, BAD, BAD, BAD] * len(prompts), steps=60,
                 rng=np.random.default_rng(0))
    return judge, rubricor, data, cfg, (good, bad)


def good_share(rubricor: Rubricor, data: RubricData, qids) -> float:
    """Mean over the queries of P(GOOD) / (P(GOOD) + P(BAD)) under the Rubricor (exact, from log-probs)."""
    comp = [rubricor.tokenizer.encode(t, add_special_tokens=False) + [rubricor.eos_id] for t in (GOOD, BAD)]
    prompts = [rubricor.prompt_ids(data.queries[q], data.summaries[q]) for q in qids]
    tokens, attn, mask = rubricor._pack(prompts + prompts, [comp[0]] * len(qids) + [comp[1]] * len(qids))
    lp = (np.asarray(rubricor._logp(rubricor.state.params, rubricor.frozen, tokens, attn)) * mask).sum(1)
    return float(np.mean(1.0 / (1.0 + np.exp(lp[len(qids):] - lp[:len(qids)]))))


def sampled_accuracy(rubricor: Rubricor, judge: Judge, data: RubricData, n: int = 8) -> float:
    """The frozen Judge's held-out pairwise accuracy when it reads rubrics the Rubricor samples (n per query,
    fixed seeds); a malformed rubric orders nothing right."""
    qids = sorted({p.query_id for p in data.test})
    pairs = by_query(data.test)
    prompts = [rubricor.prompt_ids(data.queries[q], data.summaries[q]) for q in qids for _ in range(n)]
    outs = rubricor.generate(prompts, temperature=1.0, seeds=list(range(len(prompts))))
    acc = []
    for (_, text), q in zip(outs, [q for q in qids for _ in range(n)]):
        pr = parse_rubric(text, q, rubricor.limits)
        acc.append(pair_correct(judge, pairs[q], data.by_id, data.queries, {q: pr.rubric})[0].mean() if pr.ok
                   else 0.0)
    return float(np.mean(acc))


def test_rubricor_grpo_phase_moves_toward_rubrics_the_judge_reads_right(rubric_world):
    judge, rubricor, data, cfg, (good, bad) = rubric_world
    held_out = sorted({p.query_id for p in data.test})
    # the setting works as described: reading GOOD the Judge orders the held-out pairs right, reading BAD wrong
    assert pair_correct(judge, data.test, data.by_id, data.queries, {q: good for q in held_out})[0].all()
    assert not pair_correct(judge, data.test, data.by_id, data.queries, {q: bad for q in held_out})[0].any()
    judge_before = leaves_bytes(judge.state)
    share0, acc0 = good_share(rubricor, data, held_out), sampled_accuracy(rubricor, judge, data)
    assert 0.1 < share0 < 0.4 and acc0 < 0.5
    snap = rubricor.snapshot()
    rng = np.random.default_rng(1)
    train_q = sorted({p.query_id for p in data.train})
    rewards = []
    for _ in range(2):
        batch = list(rng.choice(train_q, 4, replace=False))
        rewards.append(grpo_step(rubricor, judge, data, batch, by_query(data.train), cfg, rng)["reward_mean"])
    share1, acc1 = good_share(rubricor, data, held_out), sampled_accuracy(rubricor, judge, data)
    # GRPO on the training queries: the Rubricor writes GOOD more often on queries it never trained on, and
    # the frozen Judge, reading what it writes, orders more held-out pairs right
    assert share1 > 0.9 and share1 > share0 + 0.5, (share0, share1)
    assert acc1 > acc0 + 0.25, (acc0, acc1)
    assert leaves_bytes(judge.state) == judge_before  # the Judge stayed frozen
    rubricor.restore(snap)
