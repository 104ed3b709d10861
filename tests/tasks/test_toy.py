"""The toy arithmetic world: generator, splits, solution format, step checker, tokenizer."""

import json
import re

import pytest

from roro_jax.tasks import Problem, grade
from roro_jax.tasks import toy
from roro_jax.tasks.toy import ToyConfig
from roro_jax.tokenizer import load_tokenizer

STEP_RE = re.compile(r"^\d+ [+\-*/] \d+ = -?\d+$")


@pytest.fixture(scope="module")
def default_train():
    return toy.generate(3000, seed=0, split="train")


@pytest.fixture(scope="module")
def default_test():
    return toy.generate(500, seed=0, split="test")


def test_determinism():
    a = toy.generate(200, seed=7)
    b = toy.generate(200, seed=7)
    c = toy.generate(200, seed=8)
    assert a == b
    assert [p.solution for p in a] == [p.solution for p in b]
    assert [p.question for p in a] != [p.question for p in c]


def test_known_problem_and_solution():
    p = toy.make_problem([7, 3, 4, 5], ["*", "+", "-"])
    assert p.question == "7 * 3 + 4 - 5"
    assert p.solution == "7 * 3 = 21\n\n21 + 4 = 25\n\n25 - 5 = 20\n\nAnswer: 20"
    assert p.answer == "20" and p.source == "toy" and p.id.startswith("toy-")
    std = toy.make_problem([3, 4, 2, 5], ["+", "*", "-"], ToyConfig(precedence="standard"))
    assert std.solution == "4 * 2 = 8\n\n3 + 8 = 11\n\n11 - 5 = 6\n\nAnswer: 6"
    std2 = toy.make_problem([8, 3, 2], ["-", "+"], ToyConfig(precedence="standard"))
    assert std2.answer == "7"  # left-associative: (8 - 3) + 2


def test_splits_never_overlap(default_train, default_test):
    train_q = {p.question for p in default_train}
    test_q = {p.question for p in default_test}
    assert not train_q & test_q
    # Membership is a function of the problem, not of the seed.
    other_seed = toy.generate(3000, seed=123, split="train")
    assert not {p.question for p in other_seed} & test_q
    for p in default_test[:100]:
        assert toy.split_of(p.question, "left_to_right", 0.1) == "test" == p.meta["split"]
    for p in default_train[:100]:
        assert toy.split_of(p.question) == "train"
    # About test_fraction of the whole stream is test.
    allp = toy.generate(4000, seed=1, split="all", unique=False)
    frac = sum(p.meta["split"] == "test" for p in allp) / len(allp)
    assert 0.07 < frac < 0.13, frac


def test_unique_within_split(default_train, default_test):
    assert len({p.question for p in default_train}) == len(default_train)
    assert len({p.id for p in default_test}) == len(default_test)


@pytest.mark.parametrize("name", sorted(toy.DIFFICULTIES))
def test_solution_format_and_bounds(name):
    cfg = toy.DIFFICULTIES[name]
    probs = toy.generate(400, cfg, seed=3)
    n_ops_seen = set()
    for p in probs:
        values, ops = toy.parse_expression(p.question)
        assert cfg.min_ops <= len(ops) <= cfg.max_ops
        assert all(cfg.operand_min <= v <= cfg.operand_max for v in values)
        assert set(ops) <= set(cfg.operators)
        n_ops_seen.add(len(ops))
        steps = p.solution.split("\n\n")
        assert len(steps) == len(ops) + 1
        if cfg.labels:  # labelled chains: step i is "<label i> a op b = c"
            assert all(s.startswith(toy.LABELS[i] + " ") for i, s in enumerate(steps[:-1])), p.solution
            steps = [s[2:] for s in steps[:-1]] + steps[-1:]
        assert all(STEP_RE.match(s) for s in steps[:-1]), p.solution
        assert steps[-1] == f"Answer: {p.answer}"
        for s in steps[:-1]:
            a, op, b, _, c = s.split()
            assert toy.apply_op(int(a), op, int(b)) == int(c)
            assert cfg.min_value <= int(c) <= cfg.max_value
        assert "\n\n\n" not in p.solution and not p.solution.endswith("\n")
        assert grade(p.solution, p.answer)
        assert toy.check_solution(p, p.solution).correct
    assert n_ops_seen == set(range(cfg.min_ops, cfg.max_ops + 1))


def test_reference_answer_matches_python_eval():
    cfg = ToyConfig(precedence="standard", operators="+-*", max_ops=5, max_value=500)
    for p in toy.generate(300, cfg, seed=5):
        assert int(p.answer) == eval(p.question)  # noqa: S307 - our own digits and operators only
    for p in toy.generate(300, seed=5):  # left to right
        values, ops = toy.parse_expression(p.question)
        acc = values[0]
        for o, v in zip(ops, values[1:]):
            acc = eval(f"{acc} {o} {v}")  # noqa: S307
        assert int(p.answer) == acc


def test_config_validation():
    with pytest.raises(ValueError, match="operators"):
        ToyConfig(operators="+^")
    with pytest.raises(ValueError, match="precedence"):
        ToyConfig(precedence="right_to_left")
    with pytest.raises(ValueError, match="min_ops"):
        ToyConfig(min_ops=3, max_ops=2)
    with pytest.raises(KeyError, match="unknown toy difficulty"):
        toy.difficulty("impossible")
    assert toy.difficulty("default", max_ops=5).max_ops == 5
    with pytest.raises(ValueError, match="split"):
        toy.generate(1, split="validation")


def _problem(expr, precedence="left_to_right"):
    values, ops = toy.parse_expression(expr)
    return toy.make_problem(values, ops, ToyConfig(precedence=precedence))


def test_checker_first_wrong_step_kinds():
    p = _problem("7 * 3 + 4 - 5")  # 21, 25, 20
    ok = toy.check_solution(p, p.solution)
    assert ok.correct and ok.first_wrong is None and ok.final_answer_correct
    assert ok.verdicts == ("ok",) * 4 and ok.n_reference_steps == 4

    arith = toy.check_solution(p, "7 * 3 = 21\n\n21 + 4 = 26\n\n26 - 5 = 21\n\nAnswer: 21")
    assert arith.first_wrong == 1 and arith.verdicts[1] == "arithmetic"
    assert arith.verdicts[2:] == ("unchecked", "unchecked") and not arith.final_answer_correct
    assert arith.step_correct == [True, False, False, False]

    operand = toy.check_solution(p, "7 * 3 = 21\n\n21 + 5 = 26\n\nAnswer: 26")
    assert operand.first_wrong == 1 and operand.verdicts[1] == "operand"

    order = toy.check_solution(p, "3 + 4 = 7\n\n7 * 7 = 49\n\nAnswer: 44")
    assert order.first_wrong == 0 and order.verdicts[0] == "order"

    fmt = toy.check_solution(p, "7 * 3 = 21\n\nso 25\n\nAnswer: 20")
    assert fmt.first_wrong == 1 and fmt.verdicts[1] == "format"

    early = toy.check_solution(p, "7 * 3 = 21\n\nAnswer: 21")
    assert early.first_wrong == 1 and early.verdicts[1] == "premature_answer"

    wrong_answer = toy.check_solution(p, "7 * 3 = 21\n\n21 + 4 = 25\n\n25 - 5 = 20\n\nAnswer: 2")
    assert wrong_answer.first_wrong == 3 and wrong_answer.verdicts[3] == "answer"

    incomplete = toy.check_solution(p, "7 * 3 = 21\n\n21 + 4 = 25")
    assert incomplete.first_wrong == 2 and incomplete.verdicts == ("ok", "ok")
    assert not incomplete.correct

    extra = toy.check_solution(p, p.solution + "\n\n1 + 1 = 2")
    assert extra.first_wrong == 4 and extra.verdicts[4] == "extra"
    assert extra.final_answer_correct  # the Answer line itself is right

    lucky = toy.check_solution(p, "7 * 3 = 22\n\n22 + 4 = 26\n\n26 - 5 = 21\n\nAnswer: 20")
    assert lucky.first_wrong == 0 and lucky.final_answer_correct

    # Steps given as the rollout's list; an empty step is a format error.
    listed = toy.check_solution(p, ["7 * 3 = 21", "", "21 + 4 = 25"])
    assert listed.first_wrong == 1 and listed.verdicts[1] == "format"
    assert toy.check_solution(p, "").first_wrong == 0


def test_checker_accepts_any_legal_order_under_precedence():
    p = _problem("2 * 3 + 4 * 5", "standard")
    assert p.solution == "2 * 3 = 6\n\n4 * 5 = 20\n\n6 + 20 = 26\n\nAnswer: 26"
    alt = toy.check_solution(p, "4 * 5 = 20\n\n2 * 3 = 6\n\n6 + 20 = 26\n\nAnswer: 26")
    assert alt.correct
    bad = toy.check_solution(p, "3 + 4 = 7\n\n2 * 7 = 14\n\n14 * 5 = 70\n\nAnswer: 70")
    assert bad.first_wrong == 0 and bad.verdicts[0] == "order"
    # Left-to-right problems accept only the leftmost operation.
    q = _problem("2 + 3 * 4")
    assert q.answer == "20"
    assert toy.check_solution(q, "3 * 4 = 12\n\n2 + 12 = 14\n\nAnswer: 14").verdicts[0] == "order"


def test_checker_on_corrupted_reference_solutions():
    """Corrupt one result digit of step k of many reference solutions: the checker must say step k."""
    import random

    rng = random.Random(0)
    for p in toy.generate(300, seed=11):
        steps = p.solution.split("\n\n")
        k = rng.randrange(len(steps) - 1)
        a, op, b, eq, c = steps[k].split()
        steps[k] = f"{a} {op} {b} = {int(c) + rng.choice([-2, -1, 1, 3])}"
        chk = toy.check_solution(p, "\n\n".join(steps))
        assert chk.first_wrong == k and chk.verdicts[k] == "arithmetic", (p.solution, steps)


def test_prompt_and_training_text():
    p = _problem("7 * 3 + 4 - 5")
    assert toy.prompt_text(p) == "7 * 3 + 4 - 5\n\n"
    assert toy.training_text(p) == toy.prompt_text(p) + p.solution
    with pytest.raises(ValueError, match="no reference solution"):
        toy.training_text(Problem("x", "1 + 1", "2", "toy"))


def test_tokenizer_round_trip_and_save(tmp_path, default_train):
    tok = toy.build_tokenizer()
    assert len(tok) == 4 + len(toy.DEFAULT_ALPHABET) <= 128
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    path = toy.save_tokenizer(tmp_path / "tok")
    assert path.name == "tokenizer.json" and path.exists()
    spec = json.loads(path.read_text())
    assert spec["model"]["type"] == "WordLevel"
    loaded = toy.load_tokenizer(tmp_path / "tok")
    from_file = load_tokenizer(path)  # the tokenizer.json file itself
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    texts = [toy.training_text(p) for p in default_train[:300]]
    texts += ["\n\n", "Answer: 7\n\n", "a  b\tc\n\n\nd", "The route escalates step 3 (weight 0.5)."]
    assert all(from_file(t)["input_ids"] == tok(t)["input_ids"] for t in texts)  # (no special-token names)
    for t in (tok, loaded, auto):
        assert len(t) == len(tok)
        for text in texts:
            ids = t(text)["input_ids"]
            assert ids[0] == t.bos_token_id
            assert len(ids) == len(text) + 1  # one token per character, plus BOS
            assert t.unk_token_id not in ids
            assert t.decode(ids, skip_special_tokens=True) == text
    # "\n\n" is two newline tokens, so a step boundary is visible token by token.
    nl = tok.convert_tokens_to_ids("\n")
    assert tok("1\n\n2", add_special_tokens=False)["input_ids"][1:3] == [nl, nl]
    # Characters outside the alphabet become <unk> (never a crash).
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    # EOS appended by callers decodes away.
    ids = tok("1 + 1 = 2")["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "1 + 1 = 2"


def test_load_tokenizer_missing(tmp_path):
    for where in (tmp_path, tmp_path / "nowhere"):
        with pytest.raises(FileNotFoundError, match="tokenizer.json"):
            toy.load_tokenizer(where)
        assert load_tokenizer(where, missing_ok=True) is None  # a model folder without a tokenizer


def test_summarize_checks_and_heldout():
    probs = toy.heldout(50)
    assert probs == toy.generate(50, seed=0, split="test")
    assert all(p.meta["split"] == "test" for p in probs)
    texts = [p.solution for p in probs]
    # Break 10 solutions at their first step's result and cut 5 short.
    for i in range(10):
        steps = texts[i].split("\n\n")
        a, op, b, _, c = steps[0].split()
        steps[0] = f"{a} {op} {b} = {int(c) + 1}"
        texts[i] = "\n\n".join(steps)
    for i in range(10, 15):
        texts[i] = texts[i].split("\n\nAnswer")[0]
    s = toy.summarize_checks([toy.check_solution(p, t) for p, t in zip(probs, texts)])
    assert s["n"] == 50 and s["accuracy"] == pytest.approx(35 / 50)
    assert s["error_kinds"] == {"arithmetic": 10, "missing": 5}
    assert s["first_wrong_hist"][0] == 10
    assert 0 < s["step_accuracy"] < 1
    # The 10 broken solutions keep their (right) Answer line; the 5 cut ones have none.
    assert s["final_answer_accuracy"] == pytest.approx(45 / 50)
    with pytest.raises(ValueError):
        toy.summarize_checks([])


def test_labelled_chain_format_parse_and_check():
    cfg = toy.difficulty("chain", min_ops=3, max_ops=3)
    p = toy.make_problem([7, 3, 4, 5], ["+", "+", "-"], cfg)
    assert p.question == "7 a+3 b+4 c-5"
    assert p.solution == "a 7 + 3 = 10\n\nb 10 + 4 = 14\n\nc 14 - 5 = 9\n\nAnswer: 9"
    assert toy.parse_expression(p.question) == ([7, 3, 4, 5], ["+", "+", "-"])
    assert toy.is_labelled(p.question) and not toy.is_labelled("7 + 3")
    assert toy.check_solution(p, p.solution).correct
    # a missing, wrong or skipped label is a format error at that step; arithmetic is still checked
    for bad, at in (("7 + 3 = 10\n\nb 10 + 4 = 14", 0), ("a 7 + 3 = 10\n\nc 10 + 4 = 14", 1),
                    ("a 7 + 3 = 10\n\nb 10 + 4 = 15", 1)):
        chk = toy.check_solution(p, bad)
        assert chk.first_wrong == at and chk.verdicts[at] == ("arithmetic" if bad.endswith("15") else "format")
    # labels out of order or in an unlabelled problem are rejected
    with pytest.raises(ValueError):
        toy.parse_expression("7 b+3 a+4")
    unl = toy.make_problem([7, 3], ["+"])
    assert toy.check_solution(unl, "a 7 + 3 = 10\n\nAnswer: 10").verdicts[0] == "format"
    # labelled and unlabelled versions of one expression are different problems
    assert toy.canonical_key("7 a+3", "left_to_right") != toy.canonical_key("7 + 3", "left_to_right")
    with pytest.raises(ValueError):
        ToyConfig(labels=True, precedence="standard")


def test_corrupted_solution_repairs_or_trusts():
    cfg = toy.difficulty("chain", min_ops=3, max_ops=3)
    p = toy.make_problem([7, 3, 4, 5], ["+", "+", "-"], cfg)  # 10, 14, 9
    prefix, cont = toy.corrupted_solution(p, 0, 2, repair=True)
    assert prefix == ["a 7 + 3 = 12"]
    assert cont == ["b 10 + 4 = 14", "c 14 - 5 = 9", "Answer: 9"]
    # the repaired solution has a wrong step but the right answer: a lucky answer
    chk = toy.check_solution(p, prefix + cont)
    assert chk.first_wrong == 0 and chk.final_answer_correct and grade("\n\n".join(prefix + cont), p.answer)
    prefix, cont = toy.corrupted_solution(p, 1, -1, repair=False)
    assert prefix == ["a 7 + 3 = 10", "b 10 + 4 = 13"]
    assert cont == ["c 13 - 5 = 8", "Answer: 8"]
    assert not toy.check_solution(p, prefix + cont).final_answer_correct
    with pytest.raises(ValueError):
        toy.corrupted_solution(p, 3, 1, repair=True)
    with pytest.raises(ValueError):
        toy.corrupted_solution(p, 0, 0, repair=True)


def test_corrupted_solution_kinds_and_the_last_operation():
    cfg = toy.difficulty("chain", min_ops=3, max_ops=3)
    p = toy.make_problem([7, 3, 4, 5], ["+", "+", "-"], cfg)  # 10, 14, 9
    # a misread operand, the arithmetic on it right: the checker calls it an operand error
    prefix, cont = toy.corrupted_solution(p, 1, 2, repair=False, kind="operand")
    assert prefix[-1] == "b 10 + 6 = 16" and cont == ["c 16 - 5 = 11", "Answer: 11"]
    assert toy.check_solution(p, prefix + cont).verdicts[1] == "operand"
    prefix, cont = toy.corrupted_solution(p, 1, 0, repair=True, kind="operator")
    assert prefix[-1] == "b 10 - 4 = 6" and cont == ["c 14 - 5 = 9", "Answer: 9"]
    assert toy.check_solution(p, prefix + cont).verdicts[1] != "ok"
    # the last operation: only the Answer line follows; repaired it is the true answer, trusted the written one
    prefix, cont = toy.corrupted_solution(p, 2, -3, repair=True, kind="operand")
    assert prefix[-1] == "c 14 - 2 = 12" and cont == ["Answer: 9"]
    assert toy.corrupted_solution(p, 2, -3, repair=False, kind="operand")[1] == ["Answer: 12"]
    with pytest.raises(ValueError, match="unknown kind"):
        toy.corrupted_solution(p, 0, 1, repair=True, kind="label")
    with pytest.raises(ValueError, match="delta"):
        toy.corrupted_solution(p, 0, 0, repair=True, kind="operand")
    times = toy.make_problem([2, 3], ["*"], toy.ToyConfig(operators="*", min_ops=1, max_ops=1))
    with pytest.raises(ValueError, match="flips"):
        toy.corrupted_solution(times, 0, 0, repair=True, kind="operator")
