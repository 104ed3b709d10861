"""What the Judge and the Rubricor read in the toy worlds: step texts, the problem, checkpoint rubrics, and
the oracle process score computed from the checker."""

import numpy as np
import pytest

from roro_jax.rubric.format import format_rubric, parse_rubric
from roro_jax.rubric.judge import JudgeEncoder
from roro_jax.rubric.lm import char_tokenizer, resolve_model_path
from roro_jax.rubric.rubricor import PROMPTS
from roro_jax.rubric.serialize import SerializeConfig, serialize_trajectory
from roro_jax.rubric.teacher import TEACHERS, checkpoint_rubric, checkpoint_scores, get_teacher, reference_steps
from roro_jax.tasks import toy
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL, Step, Trajectory

Q = "5 a+5 b+6 c-2"  # reference: a 5 + 5 = 10 / b 10 + 6 = 16 / c 16 - 2 = 14 / Answer: 14


def route(texts, esc=(), small_texts=None, confs=None, qid="q1"):
    """A toy route: kept step texts, escalated indices, the discarded small proposals of escalated steps."""
    small_texts = small_texts or {}
    confs = confs or [0.95] * len(texts)
    steps = [Step(index=i, text=t + "\n\n", model=LARGE if i in esc else SMALL,
                  action=ESCALATE if i in esc else KEEP, confidence=confs[i], small_tokens=12,
                  large_tokens=12 if i in esc else 0, small_text=small_texts.get(i)) for i, t in enumerate(texts)]
    return Trajectory(qid, 0, "p", steps, correct=True)


def test_reasoning_serialisation_holds_step_texts_writers_and_discarded_proposals():
    t = route(["a 5 + 5 = 10", "b 10 + 6 = 16", "c 16 - 2 = 14", "Answer: 14"], esc=(1,),
              small_texts={1: "b 10 + 6 = 17\n\n"}, confs=[0.95, 0.31, 0.99, 0.97])
    out = serialize_trajectory(t, SerializeConfig(style="reasoning", max_chars=400))
    lines = out.splitlines()
    assert lines[0] == "n4 e1 L12 S48 f-"
    assert lines[1:] == ["s13 a 5 + 5 = 10", "L02 b 10 + 6 = 16 | s: b 10 + 6 = 17", "s20 c 16 - 2 = 14",
                         "s15 Answer: 14"]


def test_confidence_code_orders_confident_steps():
    from roro_jax.rubric.serialize import confidence_code

    assert [confidence_code(c) for c in (0.5, 0.9, 0.99, 0.996, 1.0, None)] == ["03", "10", "20", "24", "99", "--"]
    cs = [0.0, 0.3, 0.8, 0.95, 0.99, 0.999, 0.9999]
    assert [confidence_code(c) for c in cs] == sorted(confidence_code(c) for c in cs)


def test_judge_input_holds_the_problem_and_every_step_text():
    tok = char_tokenizer()
    ser = SerializeConfig(style="reasoning", max_chars=400, query_chars=64)
    t = route(["a 5 + 5 = 11", "b 11 + 6 = 17", "c 17 - 2 = 15", "Answer: 15"])
    enc = JudgeEncoder(tok, ser, use_rubric=True, max_criteria=6)
    ids, pos, w = enc.encode(Q, checkpoint_rubric("q1", Q), t)
    text = tok.decode(ids)
    assert "Q:" + Q in text
    for s in ("a 5 + 5 = 11", "b 11 + 6 = 17", "c 17 - 2 = 15", "Answer: 15"):
        assert s in text
    # one marker per checkpoint, each right after its criterion text
    assert len(pos) == 3 and np.isclose(sum(w), 1.0)
    for p, crit in zip(pos, ["a 5 + 5 = 10", "b 10 + 6 = 16", "c 16 - 2 = 14"]):
        assert tok.decode(ids[:p + 1]).endswith(crit + " ?")


def test_interleaved_layout_reads_each_checkpoint_right_after_its_step():
    """``judge.layout=interleaved``: criterion k's marker closes the line after step k; criteria past the
    route's last step follow it; the no-rubric Judge reads the same input in every layout."""
    tok = char_tokenizer()
    ser = SerializeConfig(style="reasoning", max_chars=400, query_chars=64)
    t = route(["a 5 + 5 = 11", "b 11 + 6 = 17", "Answer: 17"], esc=(1,), small_texts={1: "b 11 + 6 = 18\n\n"})
    enc = JudgeEncoder(tok, ser, use_rubric=True, max_criteria=6, layout="interleaved")
    rub = checkpoint_rubric("q1", Q)
    ids, pos, w = enc.encode(Q, rub, t)
    text = tok.decode(ids)
    assert text.splitlines() == ["<s>Q:" + Q, "n3 e1 L12 S36 f-",
                                 "s13 a 5 + 5 = 11", "R: a 5 + 5 = 10 ?",
                                 "L13 b 11 + 6 = 17 | s: b 11 + 6 = 18", "R: b 10 + 6 = 16 ?",
                                 "s13 Answer: 17", "R: c 16 - 2 = 14 ?"]
    assert len(pos) == 3 and np.allclose(w, [1 / 3] * 3)
    for p, crit in zip(pos, [c.text for c in rub.criteria]):
        assert tok.decode(ids[:p + 1]).endswith("R: " + crit + " ?")
    # a route longer than the rubric: steps after the last criterion carry no marker
    long = route(["a 5 + 5 = 10", "b 10 + 6 = 16", "c 16 - 2 = 14", "Answer: 14"])
    ids, pos, _ = enc.encode(Q, rub, long)
    assert tok.decode(ids).endswith("R: c 16 - 2 = 14 ?\ns13 Answer: 14\n") and len(pos) == 3
    plain = [JudgeEncoder(tok, ser, use_rubric=False, layout=name).encode(Q, None, t) for name in ("after", "interleaved")]
    assert plain[0] == plain[1]
    with pytest.raises(ValueError, match="needs a rubric"):
        enc.encode(Q, None, t)
    with pytest.raises(KeyError, match="unknown Judge layout 'nope'"):
        JudgeEncoder(tok, ser, layout="nope")


def test_holistic_layout_reads_the_rubric_and_scores_once():
    """``judge.layout=holistic``: the ``after`` text with the criteria unmarked, then one ``S ?`` marker."""
    tok = char_tokenizer()
    ser = SerializeConfig(style="reasoning", max_chars=400, query_chars=64)
    t = route(["a 5 + 5 = 11", "b 11 + 6 = 17", "Answer: 17"])
    rub = checkpoint_rubric("q1", Q)
    ids, pos, w = JudgeEncoder(tok, ser, layout="holistic").encode(Q, rub, t)
    after_ids, after_pos, _ = JudgeEncoder(tok, ser, layout="after").encode(Q, rub, t)
    text = tok.decode(ids)
    assert pos == [len(ids) - 1] and w == [1.0] and text.endswith("c 16 - 2 = 14\nS ?")
    assert text.replace("\nS ?", "") == tok.decode(after_ids).replace(" ?", "").rstrip("\n")
    assert len(after_pos) == 3


def test_rubricor_problem_prompt_holds_the_problem_and_no_profile():
    ser = SerializeConfig(query_chars=64)
    text = PROMPTS["problem"](Q, "n4 9939", ser)
    assert text.startswith(Q) and "9939" not in text
    assert "9939" in PROMPTS["profile"](Q, "n4 9939", ser)


def test_checkpoint_rubric_is_the_reference_solution_and_parses():
    rub = checkpoint_rubric("q1", Q)
    assert [c.text for c in rub.criteria] == ["a 5 + 5 = 10", "b 10 + 6 = 16", "c 16 - 2 = 14"]
    parsed = parse_rubric(format_rubric(rub), "q1")
    assert parsed.ok and [c.text for c in parsed.rubric.criteria] == [c.text for c in rub.criteria]
    # unlabelled toy problems too; the last max_criteria steps are kept; non-toy queries have none
    assert [c.text for c in checkpoint_rubric("q", "7 + 3 - 4 + 2", max_criteria=2).criteria] == \
        ["10 - 4 = 6", "6 + 2 = 8"]
    assert checkpoint_rubric("q", "What is 2 + 2?") is None
    assert reference_steps("What is 2 + 2?") is None
    # the registry: the checkpoint teacher falls back to the profile teacher for non-toy queries
    assert set(TEACHERS) >= {"profile", "checkpoints"}
    assert get_teacher("checkpoints")("q", Q, None).criteria[0].text == "a 5 + 5 = 10"
    with pytest.raises(KeyError, match="unknown rubric teacher"):
        get_teacher("nope")


def test_oracle_process_score_equals_a_hand_computation():
    queries = {"q1": Q}
    clean = route(["a 5 + 5 = 10", "b 10 + 6 = 16", "c 16 - 2 = 14", "Answer: 14"])
    # a lucky route: step a wrong and kept, repaired by the large model at step b: right answer, 3 of 4 steps
    lucky = route(["a 5 + 5 = 11", "b 10 + 6 = 16", "c 16 - 2 = 14", "Answer: 14"], esc=(1,))
    # wrong at b, then consistent with the wrong value: 1 of 4
    wrong = route(["a 5 + 5 = 10", "b 10 + 6 = 17", "c 17 - 2 = 15", "Answer: 15"])
    # stops after two right steps (max steps): 2 of 4; an empty step does not shift the positions
    short = route(["a 5 + 5 = 10", "  ", "b 10 + 6 = 16"])
    got = checkpoint_scores([clean, lucky, wrong, short], queries)
    np.testing.assert_allclose(got, [1.0, 0.75, 0.25, 0.5])
    with pytest.raises(ValueError, match="not a toy problem"):
        checkpoint_scores([clean], {"q1": "What is 2 + 2?"})


def test_toy_model_paths_resolve():
    assert resolve_model_path("toy:large").endswith("assets/toy/large")
    assert resolve_model_path("/some/folder") == "/some/folder"
    with pytest.raises(FileNotFoundError):
        resolve_model_path("toy:no-such-model")


def test_unlabelled_checkpoint_rubrics_parse_and_the_loop_warns_on_teachers_that_do_not():
    """`make demo`'s world is unlabelled ("7 + 5 + 9 + 9"): its checkpoint rubrics hold no letters, and must
    still parse, or the Rubricor learns rubrics that all fall back to the profile rubric."""
    from roro_jax.rubric.format import RubricLimits
    from roro_jax.rubric.loop import TeacherRubricWarning, check_teacher_rubrics
    from roro_jax.types import Criterion, Rubric

    limits = RubricLimits(max_criteria=4)
    teacher = {f"q{i}": get_teacher("checkpoints")(f"q{i}", q, None, max_criteria=4)
               for i, q in enumerate(["7 + 5 + 9 + 9", "3 * 4 - 20 + 1", Q])}
    assert [c.text for c in teacher["q0"].criteria] == ["7 + 5 = 12", "12 + 9 = 21", "21 + 9 = 30"]
    assert check_teacher_rubrics(teacher, limits, "checkpoints") == {}
    teacher["bad"] = Rubric("bad", [Criterion("!!", 1.0)])
    with pytest.warns(TeacherRubricWarning, match=r"rubric.teacher=mine: 1 of 4 teacher rubrics do not parse"):
        bad = check_teacher_rubrics(teacher, limits, "mine")
    assert list(bad) == ["bad"] and "no words" in bad["bad"]


def test_rubricor_solve_prompt_is_the_prompt_the_toy_models_solve_from():
    ser = SerializeConfig(query_chars=64)
    problem = toy.generate(1, seed=3)[0]
    text = PROMPTS["solve"](problem.question, "n4 9939", ser)
    assert text == toy.prompt_text(problem) and "9939" not in text and "R:" not in text


def test_the_toy_solver_writes_checkpoint_rubrics_in_the_steps_format_and_not_in_the_numbered_one():
    """The shipped toy large model, read as a Rubricor before any fine-tuning: from the ``solve`` prompt in
    the ``steps`` format it writes the problem's checkpoint rubric (the arithmetic it was trained on);
    from the ``problem`` prompt in the numbered grammar it writes no rubric at all (there is nothing to
    transfer: SFT must teach it the arithmetic again, in a new format, from a few dozen examples)."""
    from roro_jax.rubric.format import RubricLimits
    from roro_jax.rubric.lm import LMSpec
    from roro_jax.rubric.rubricor import Rubricor, RubricorConfig

    ser = SerializeConfig(style="reasoning", max_chars=400, query_chars=64)
    limits = RubricLimits(max_criteria=6, max_criterion_chars=80)
    from roro_jax.worlds.toy import toy_heldout

    problems = toy_heldout(12)  # held-out problems of the task the shipped models were trained on
    qids = [str(p.id) for p in problems]
    want = [[c.text for c in checkpoint_rubric(q, p.question, max_criteria=6).criteria]
            for q, p in zip(qids, problems)]

    def written(prompt, output):
        rub = Rubricor(RubricorConfig(model=LMSpec(path="toy:large"), prompt=prompt, output=output,
                                      max_new_tokens=64), ser, limits)
        return rub.write([rub.prompt_ids(p.question, "") for p in problems], qids)

    solve = written("solve", "steps")
    # every step the reference writes, in order (the untuned solver then also writes its "Answer: N" line)
    hits = [pr.ok and [c.text for c in pr.rubric.criteria][:len(w)] == w for pr, w in zip(solve, want)]
    assert sum(hits) >= 10, [pr.rubric.raw if pr.ok else pr.reason for pr in solve]
    assert not any(pr.ok for pr in written("problem", "numbered"))
