"""Replay world: routing semantics on a synthetic fixture, and the real recorded episodes."""

import json
import warnings

import numpy as np
import pytest

from roro_jax.router.features import prm_features
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL
from roro_jax.worlds import (OUTCOME_RULES, EpisodeFormatError, ReplayWorld, load_episodes,
                             register_outcome_rule)
from roro_jax.worlds.replay import EpisodeWarning


def _episode(eid, small, large, small_correct, large_correct):
    """small/large: lists of (prm score, tokens)."""
    return {
        "id": eid, "dataset": "fixture", "query": f"question {eid}", "answer": "7",
        "srm_steps": [f"{eid} small step {i}" for i in range(len(small))],
        "srm_prm_scores": [s for s, _ in small], "srm_token_counts": [n for _, n in small],
        "srm_total_tokens": sum(n for _, n in small), "srm_answer": "7" if small_correct else "6",
        "srm_correct": small_correct,
        "lrm_steps": [f"{eid} large step {i}" for i in range(len(large))],
        "lrm_prm_scores": [s for s, _ in large], "lrm_token_counts": [n for _, n in large],
        "lrm_total_tokens": sum(n for _, n in large), "lrm_answer": "7" if large_correct else "5",
        "lrm_correct": large_correct, "mixed_correct": True,
    }


FIXTURE = [
    # equal lengths; small wrong, large right
    _episode("e0", [(0.9, 10), (0.2, 20), (0.8, 30)], [(0.95, 100), (0.9, 200), (0.99, 300)], False, True),
    # small shorter than large; small right, large wrong
    _episode("e1", [(0.7, 11), (0.6, 12)], [(0.9, 101), (0.8, 102), (0.7, 103), (0.6, 104)], True, False),
    # small longer than large; small wrong, large right
    _episode("e2", [(0.5, 5), (0.4, 6), (0.3, 7), (0.2, 8)], [(0.99, 50), (0.98, 60)], False, True),
    # both right
    _episode("e3", [(1.0, 1), (1.0, 2)], [(1.0, 3), (1.0, 4)], True, True),
]
SMALL_TOK = [[10, 20, 30], [11, 12], [5, 6, 7, 8], [1, 2]]
LARGE_TOK = [[100, 200, 300], [101, 102, 103, 104], [50, 60], [3, 4]]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def fixture_path(tmp_path):
    return _write(tmp_path / "fixture_small_large.jsonl", FIXTURE)


@pytest.fixture()
def world(fixture_path):
    return ReplayWorld(fixture_path)


def test_load_fixture(world, fixture_path):
    assert world.ids == ["e0", "e1", "e2", "e3"]
    assert world.max_steps == 4
    assert list(world.n_small) == [3, 2, 4, 2] and list(world.n_large) == [3, 4, 2, 2]
    ep = world.episodes[0]
    assert ep.small_tokens == (10, 20, 30) and ep.large_prm == (0.95, 0.9, 0.99)
    assert ep.meta["recorded_mixed_correct"] is True
    # A folder of files works too.
    assert [e.id for e in load_episodes(fixture_path.parent)] == world.ids


def test_all_keep_is_the_small_model(world):
    r = world.route(world.all_keep())
    assert r.is_estimate and r.outcome_rule == "last_writer"
    assert list(r.correct) == [False, True, False, True]
    assert list(r.large_tokens) == [0, 0, 0, 0]
    assert list(r.small_tokens) == [sum(t) for t in SMALL_TOK]
    assert list(r.n_steps) == [3, 2, 4, 2] and r.observed.all()
    assert np.all(r.large_share == 0) and np.all(~r.last_writer_large)
    trajs = world.trajectories(world.all_keep(), np.arange(4))
    for tr, ep in zip(trajs, world.episodes):
        assert [s.text for s in tr.steps] == list(ep.small_steps)
        assert all(s.model == SMALL and s.action == KEEP and s.small_text is None for s in tr.steps)
        assert tr.answer_text == ep.small_answer and tr.large_tokens == 0


def test_all_escalate_is_the_large_model(world):
    r = world.route(world.all_escalate())
    assert list(r.correct) == [True, False, True, True]
    assert list(r.large_tokens) == [sum(t) for t in LARGE_TOK]
    assert list(r.n_steps) == [3, 4, 2, 2]
    # Small proposals are generated (and counted) wherever the small model has a step in the route.
    assert list(r.small_tokens) == [60, 23, 11, 3]
    assert np.all(r.large_share == 1.0) and np.all(r.large_frac == 1.0)
    trajs = world.trajectories(world.all_escalate(), np.arange(4))
    for tr, ep in zip(trajs, world.episodes):
        assert [s.text for s in tr.steps] == list(ep.large_steps)
        assert tr.answer_text == ep.large_answer and tr.large_share == 1.0


def test_mixed_routes_by_hand(world):
    acts = np.array([
        [0, 1, 0, 0],  # e0: s0 l1 s2 -> small wrote last
        [0, 1, 0, 0],  # e1: s0 l1, then the small solution is over: l2 l3 forced
        [1, 0, 0, 0],  # e2: l0 s1, then only the small model has steps: s2 s3
        [0, 0, 0, 0],
    ])
    r = world.route(acts)
    assert r.escalated.astype(int).tolist() == [[0, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert r.decision_mask.astype(int).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert list(r.n_steps) == [3, 4, 4, 2]
    assert list(r.large_tokens) == [200, 102 + 103 + 104, 50, 0]
    assert list(r.small_tokens) == [60, 23, 26, 3]
    assert list(r.kept_tokens) == [10 + 200 + 30, 11 + 102 + 103 + 104, 50 + 6 + 7 + 8, 3]
    assert list(r.last_writer_large) == [False, True, False, False]
    assert list(r.correct) == [False, False, False, True]  # last writer's recorded outcome
    assert list(r.observed) == [False, False, False, True]
    np.testing.assert_allclose(r.large_frac, [200 / 600, 309 / 410, 50 / 110, 0])

    # The route stops at the first step that ends its writer's solution.
    r2 = world.route(np.array([[0, 0, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 0, 0]]))
    assert list(r2.n_steps) == [3, 4, 2, 2]  # e2: l1 is the large model's last step
    assert list(r2.last_writer_large) == [True, True, True, False]
    assert list(r2.correct) == [True, False, True, True]


def test_costs_add_up_over_trajectories(world):
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 2, size=(64, 4))
    idx = rng.integers(0, 4, size=64)
    r = world.route(acts, idx)
    trajs = world.trajectories(acts, idx, policy_id="rand", sample_idx=np.arange(64))
    for b, tr in enumerate(trajs):
        ep = world.episodes[idx[b]]
        assert tr.query_id == ep.id and tr.sample_idx == b and len(tr.steps) == r.n_steps[b]
        assert tr.large_tokens == r.large_tokens[b]
        assert tr.small_tokens == r.small_tokens[b]
        assert tr.large_share == pytest.approx(r.large_share[b])
        assert tr.n_escalations == r.n_escalations[b]
        assert tr.correct == bool(r.correct[b])
        for s in tr.steps:
            if s.action == ESCALATE:
                assert s.model == LARGE and s.text == ep.large_steps[s.index]
                assert s.large_tokens == ep.large_tokens[s.index]
                assert s.small_text == (ep.small_steps[s.index] if s.index < ep.n_small else None)
            else:
                assert s.model == SMALL and s.text == ep.small_steps[s.index] and s.large_tokens == 0
    # Batch layouts agree: [G, E, T] without indices == flattened rows with indices.
    g = rng.integers(0, 2, size=(5, 4, 4))
    rg = world.route(g)
    rf = world.route(g.reshape(20, 4), np.tile(np.arange(4), 5))
    assert np.array_equal(rg.large_tokens.reshape(-1), rf.large_tokens)
    assert np.array_equal(rg.correct.reshape(-1), rf.correct)


def test_every_output_is_flagged_as_estimate(world):
    rng = np.random.default_rng(1)
    acts = rng.integers(0, 2, size=(4, 4))
    for rule in sorted(OUTCOME_RULES):
        w = ReplayWorld(world.episodes, outcome_rule=rule)
        assert w.route(acts).is_estimate and w.route(acts).outcome_rule == rule
        ev = w.evaluate(acts)
        assert ev["accuracy_is_estimate"] is True and ev["outcome_rule"] == rule
        for tr in w.trajectories(acts, np.arange(4)):
            assert tr.correct_is_estimate is True
            assert tr.meta["outcome_rule"] == rule and tr.meta["world"] == "replay"
        # Pure routes always reproduce the recorded outcomes.
        assert list(w.route(w.all_keep()).correct) == [False, True, False, True]
        assert list(w.route(w.all_escalate()).correct) == [True, False, True, True]


def test_outcome_rules(world):
    acts = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    # e0: l0 s1 s2 (small majority, small last); e1: s0 l1 l2 l3; e2: l0 s1 s2 s3; e3: s0 l1.
    got = {rule: ReplayWorld(world.episodes, outcome_rule=rule).route(acts).correct.tolist()
           for rule in ("last_writer", "majority", "both", "either")}
    assert got["last_writer"] == [False, False, False, True]
    assert got["majority"] == [False, False, False, True]
    assert got["both"] == [False, False, False, True]
    assert got["either"] == [True, True, True, True]
    acts2 = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    # e0: s0 l1 l2 -> large majority and last writer; e2: s0 l1 -> tie, last writer large.
    maj = ReplayWorld(world.episodes, outcome_rule="majority").route(acts2).correct
    assert maj.tolist() == [True, True, True, True]
    # prm_gate: e0 mixed route s0 (0.9) l1 (0.9) l2 (0.99) passes 0.85, fails 0.95.
    assert ReplayWorld(world.episodes, outcome_rule="prm_gate", prm_threshold=0.85).route(acts2).correct[0]
    assert not ReplayWorld(world.episodes, outcome_rule="prm_gate", prm_threshold=0.95).route(acts2).correct[0]
    with pytest.raises(KeyError, match="unknown outcome rule"):
        ReplayWorld(world.episodes, outcome_rule="oracle")
    with pytest.raises(TypeError):
        ReplayWorld(world.episodes, outcome_rule="last_writer", prm_threshold=0.5)


def test_outcome_rules_where_they_disagree(world):
    """Mixed routes on which last_writer, majority and both give three different answer patterns, so a rule
    replaced by "the recorded outcome of the last writer" is caught."""
    # e0 (small wrong, large right): l0 l1 s2 -> large majority, small last writer.
    # e1 (small right, large wrong): l0 s1    -> a tie (last writer small decides majority), small last.
    # e2 (small wrong, large right): s0 l1    -> a tie, large last writer (forced end: l1 is large's last step).
    # e3: pure small.
    acts = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    r = ReplayWorld(world.episodes).route(acts)
    assert r.n_escalations.tolist() == [2, 1, 1, 0] and r.n_steps.tolist() == [3, 2, 2, 2]
    assert r.last_writer_large.tolist() == [False, False, True, False]
    got = {rule: ReplayWorld(world.episodes, outcome_rule=rule).route(acts).correct.tolist()
           for rule in ("last_writer", "majority", "both", "either")}
    assert got["last_writer"] == [False, True, True, True]
    assert got["majority"] == [True, True, True, True]  # e0: the large model wrote 2 of 3 steps
    assert got["both"] == [False, False, False, True]  # mixed routes need both recorded solutions right
    assert got["either"] == [True, True, True, True]


def test_register_custom_rule(world):
    @register_outcome_rule("always_wrong_test")
    def _never(ctx):
        return np.zeros(ctx.n_steps.shape, bool)

    try:
        w = ReplayWorld(world.episodes, outcome_rule="always_wrong_test")
        assert not w.route(w.all_escalate()).correct.any()
    finally:
        OUTCOME_RULES.pop("always_wrong_test")


def test_features_are_the_prm_family(world):
    acts = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    f = world.features(acts)
    assert f.shape == (4, 4, 5) and f.dtype == np.float32
    # e0: written scores s0=0.9, l1=0.9, s2=0.8; proposals 0.9, 0.2, 0.8; tokens 10, 20, 30.
    np.testing.assert_allclose(f[0, :3], [
        [0.9, 1.0, 1.0, 10 / 300, 0 / 30],
        [0.2, 0.9, 0.9, 20 / 300, 1 / 30],
        [0.8, 0.9, 0.9 * 0.9, 30 / 300, 2 / 30],
    ], rtol=1e-6)
    assert np.all(f[0, 3] == 0)
    # e1: decisions only at t=0, 1 (the small solution has 2 steps); forced steps get zeros.
    np.testing.assert_allclose(f[1, 1], [0.6, 0.9, 0.9, 12 / 300, 1 / 30], rtol=1e-6)
    assert np.all(f[1, 2:] == 0)
    # Same numbers as the registered family on the written sequence, proposal score swapped in.
    r = world.route(acts)
    written = np.where(r.escalated, world.large_prm, world.small_prm)
    ref = np.array(prm_features(written, world.small_tok, r.decision_mask))
    ref[..., 0] = world.small_prm * r.decision_mask
    np.testing.assert_allclose(f, ref, rtol=1e-6)


def test_features_depend_only_on_earlier_actions(world):
    rng = np.random.default_rng(2)
    for _ in range(20):
        a = rng.integers(0, 2, size=(4, 4))
        t = int(rng.integers(0, 4))
        b = a.copy()
        b[:, t:] = rng.integers(0, 2, size=(4, 4 - t))
        fa, fb = world.features(a), world.features(b)
        ra, rb = world.route(a), world.route(b)
        both = ra.decision_mask[:, t] & rb.decision_mask[:, t]
        np.testing.assert_array_equal(fa[:, :t + 1][both[:, None].repeat(t + 1, 1)],
                                      fb[:, :t + 1][both[:, None].repeat(t + 1, 1)])
        np.testing.assert_array_equal(ra.decision_mask[:, :t + 1], rb.decision_mask[:, :t + 1])


def test_rollout_matches_batch_functions(world):
    def policy(f, t):
        return (f[..., 0] < 0.65).astype(np.int8)

    acts, feats, r = world.rollout(policy)
    np.testing.assert_array_equal(feats, world.features(acts))
    np.testing.assert_array_equal(r.correct, world.route(acts).correct)
    # The PRM-threshold policy needs no rollout: same decisions as threshold_actions.
    thr = world.threshold_actions([0.65])[0]
    assert np.array_equal(acts[r.decision_mask], thr[r.decision_mask])
    acts_g, _, rg = world.rollout(policy, shape=(3,))
    assert acts_g.shape == (3, 4, 4) and np.array_equal(rg.large_tokens[0], r.large_tokens)
    sweep = world.route(world.threshold_actions([0.0, 0.5, 1.01]))
    assert sweep.large_tokens[0].sum() == 0 and np.array_equal(sweep.large_frac[2], np.ones(4))


def test_action_validation(world):
    with pytest.raises(ValueError, match="keep"):
        world.route(np.full((4, 4), 2))
    with pytest.raises(ValueError, match="need 4"):
        world.route(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="episodes"):
        world.route(np.zeros((3, 4)))
    with pytest.raises(IndexError):
        world.route(np.zeros((2, 4)), [0, 9])
    # Narrower arrays are fine when the selected episodes are short; wider ones are cut.
    assert world.route(np.ones((1, 2)), [3]).large_tokens[0] == 7
    assert world.route(np.ones((4, 30))).large_tokens.tolist() == [600, 410, 110, 7]
    assert world.route(np.ones((4, 4), bool)).large_tokens.tolist() == [600, 410, 110, 7]


def test_duplicate_ids(tmp_path):
    rows = [FIXTURE[0], FIXTURE[1], dict(FIXTURE[0], srm_correct=True)]
    p = _write(tmp_path / "dup.jsonl", rows)
    eps = load_episodes(p)
    assert [e.id for e in eps] == ["e0", "e1", "e0#2"]
    assert eps[2].meta["recorded_id"] == "e0" and eps[2].small_correct
    assert [e.id for e in load_episodes(p, duplicate_ids="first")] == ["e0", "e1"]
    with pytest.raises(EpisodeFormatError, match="dup.jsonl:3: duplicate"):
        load_episodes(p, duplicate_ids="error")


def _bad(key, value):
    return dict(FIXTURE[0], **{key: value})


def test_episode_format_error_is_an_input_error():
    """So the ``roro`` command prints it as one ``roro: error:`` line with status 2."""
    from roro_jax.types import InputError

    assert issubclass(EpisodeFormatError, InputError)


def test_byte_order_mark_and_token_totals(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in FIXTURE).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fixture's totals add up: no warning
        assert [e.id for e in load_episodes(p)] == ["e0", "e1", "e2", "e3"]
    rows = [dict(r) for r in FIXTURE]
    rows[2]["lrm_total_tokens"] += 2  # 2 steps: within one token per step (a re-tokenised boundary)
    rows[3]["srm_total_tokens"] += 3  # 2 steps, 3 tokens off: steps missing from the record
    with pytest.warns(EpisodeWarning, match=r"in 1 of 4 episodes .* line 4 \(id 'e3'\): sum of srm_token_counts 3 "
                                            r"vs srm_total_tokens 6"):
        load_episodes(_write(tmp_path / "off.jsonl", rows))


@pytest.mark.parametrize("row,match", [
    ("{oops", "malformed JSON"),
    ([1, 2], "expected an object"),
    ({k: v for k, v in FIXTURE[0].items() if k != "lrm_steps"}, "missing field"),
    (_bad("srm_prm_scores", [0.9, 0.2]), "lengths 3, 2, 3"),
    (_bad("srm_prm_scores", [0.9, 1.5, 0.1]), r"srm_prm_scores\[1\]"),
    (_bad("lrm_prm_scores", [0.9, float("nan"), 0.1]), r"lrm_prm_scores\[1\]"),
    (_bad("srm_token_counts", [1, -2, 3]), r"srm_token_counts\[1\]"),
    (_bad("srm_token_counts", [1, 2.5, 3]), r"srm_token_counts\[1\]"),
    (_bad("srm_correct", "True"), "srm_correct must be true/false"),
    (_bad("srm_steps", "['a', 'b', 'c']"), "srm_steps' must be a list"),
    (_bad("lrm_steps", []), "empty"),
    (_bad("query", ""), "query"),
])
def test_malformed_episode_rows(tmp_path, row, match):
    p = _write(tmp_path / "bad.jsonl", [FIXTURE[1], row])
    with pytest.raises(EpisodeFormatError, match=match) as e:
        load_episodes(p)
    assert "bad.jsonl:2" in str(e.value)


def test_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RORO_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="RORO_SHARED_DATA"):
        load_episodes("math500")
    # a missing path (absolute, or with a folder) is named as such; it used to reach Path.glob with an
    # absolute pattern and raise NotImplementedError("Non-relative patterns are unsupported")
    (tmp_path / "nowhere" / "episodes").mkdir(parents=True)
    for missing in (tmp_path / "gone" / "aime.jsonl", str(tmp_path / "aime.jsonl"), "runs/x/aime.jsonl"):
        with pytest.raises(FileNotFoundError, match=r"episode file or folder .*aime\.jsonl' does not exist"):
            load_episodes(missing)
    # a bare name is looked up in the shared folder, with or without its .jsonl
    _write(tmp_path / "nowhere" / "episodes" / "aime_a_b.jsonl", FIXTURE[:2])
    assert len(load_episodes("aime")) == len(load_episodes("aime_a_b.jsonl")) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.jsonl"):
        load_episodes(tmp_path / "empty")


@pytest.mark.shared_data
def test_real_math500_episodes(shared_data):
    world = ReplayWorld(shared_data / "episodes" / "math500_qwen3-1.7b_qwen3-14b.jsonl")
    assert len(world) == 169 and world.max_steps <= 30
    keep, esc = world.evaluate(world.all_keep()), world.evaluate(world.all_escalate())
    sweep = world.route(world.threshold_actions(np.linspace(0, 1, 11)))
    print(f"\nreplay MATH-500 (Qwen3-1.7B -> 14B), {len(world)} episodes, outcome rule "
          f"{world.outcome_rule!r} (estimate): small-only acc {keep['accuracy']:.3f}, large-only acc "
          f"{esc['accuracy']:.3f}, mean large tokens {esc['large_tokens']:.0f}")
    print("TRIM-Thr sweep (threshold, est. accuracy, large-token fraction):",
          [(round(float(t), 1), round(float(a), 3), round(float(c), 3)) for t, a, c in
           zip(np.linspace(0, 1, 11), sweep.correct.mean(-1), sweep.large_frac.mean(-1))])
    assert round(keep["accuracy"], 3) == 0.686 and round(esc["accuracy"], 3) == 0.858
    assert keep["large_tokens"] == 0 and esc["large_frac"] == 1.0
    assert keep["small_tokens"] == pytest.approx(np.mean([sum(e.small_tokens) for e in world.episodes]))
    # Three problems were recorded twice; every row is kept, under distinct ids.
    assert sum("#" in i for i in world.ids) == 3
    # Estimated accuracy of the threshold sweep runs from the small to the large model's.
    acc = sweep.correct.mean(-1)
    assert acc[0] == pytest.approx(0.686, abs=5e-4) and acc.max() <= 0.9
    trajs = world.trajectories(world.threshold_actions([0.9])[0], np.arange(len(world)))
    assert all(t.correct_is_estimate for t in trajs)


@pytest.mark.shared_data
def test_real_aime2025_episodes(shared_data):
    world = ReplayWorld(shared_data / "episodes" / "aime2025_qwen3-1.7b_qwen3-14b.jsonl")
    keep, esc = world.evaluate(world.all_keep()), world.evaluate(world.all_escalate())
    print(f"\nreplay AIME 2025: {len(world)} episodes, small {keep['accuracy']:.2f}, large {esc['accuracy']:.2f}")
    assert len(world) == 30 and round(keep["accuracy"], 2) == 0.10 and round(esc["accuracy"], 2) == 0.27


@pytest.mark.shared_data
def test_grader_agrees_with_recorded_labels(shared_data):
    """Our grader on the recorded final answers vs the recording group's correctness labels."""
    from roro_jax.tasks import answers_match

    eps = load_episodes(shared_data / "episodes" / "math500_qwen3-1.7b_qwen3-14b.jsonl")
    for who in ("small", "large"):
        dis = [(getattr(e, f"{who}_answer"), e.answer, getattr(e, f"{who}_correct")) for e in eps
               if answers_match(getattr(e, f"{who}_answer"), e.answer) != getattr(e, f"{who}_correct")]
        rate = 1 - len(dis) / len(eps)
        print(f"\ngrader vs recorded labels ({who} model): {rate:.1%} agree; disagreements "
              f"(answer, gold, recorded label): {dis}")
        assert rate >= 0.95


def test_prm_gate_threshold_is_inclusive_and_defaults_to_a_half(world):
    """Two mixed routes of e0 (the large model, right, writes the last step): s0 (0.9) l1 (0.9) l2 (0.99)
    and s0 (0.9) s1 (0.2) l2 (0.99). Right iff the lowest written PRM score reaches the threshold, which
    is inclusive and defaults to 0.5."""
    acts, idx = np.array([[0, 1, 1, 0], [0, 0, 1, 0]]), [0, 0]

    def correct(**kw):
        return ReplayWorld(world.episodes, outcome_rule="prm_gate", **kw).route(acts, idx).correct.tolist()

    assert correct() == [True, False]
    assert correct(prm_threshold=0.9) == [True, False]  # 0.9 meets 0.9
    assert correct(prm_threshold=0.2) == [True, True]
    assert correct(prm_threshold=0.95) == [False, False]


def test_reward_batch_holds_the_declared_fields(world):
    """``RouteBatch.reward_batch`` holds the replay world's declared reward fields (roro_jax.worlds.reward_fields;
    ``process`` comes from the scorer) and agrees with the same routes as trajectories (what the toy world's
    rollout scores, ``roro_jax.rl.stream.reward_inputs``)."""
    from roro_jax.rl.stream import reward_inputs
    from roro_jax.worlds.reward_fields import REWARD_FIELDS

    acts = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1]])
    rb = world.route(acts).reward_batch()
    assert set(rb) | {"process"} == REWARD_FIELDS["replay"]
    want = reward_inputs(world.trajectories(acts, np.arange(4)))
    assert set(rb) == set(want)
    for k in rb:
        np.testing.assert_allclose(rb[k], want[k], rtol=1e-6, err_msg=k)
