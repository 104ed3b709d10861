"""Rubric parser: valid, malformed and adversarial text."""

import math

import pytest

from roro_jax.rubric.format import RubricLimits, format_rubric, parse_rubric, prune_rubric
from roro_jax.types import Criterion, Rubric

VALID = "1. [w=0.4] The route escalates step 3.\n2. [w=0.6] Confident steps stay small.\n"


def test_valid_parse_normalises_weights():
    r = parse_rubric(VALID, "q1")
    assert r.ok and r.reason == "ok"
    assert [c.text for c in r.rubric.criteria] == ["The route escalates step 3.", "Confident steps stay small."]
    assert [c.weight for c in r.rubric.criteria] == pytest.approx([0.4, 0.6])
    assert r.rubric.query_id == "q1" and r.rubric.raw == VALID


def test_lenient_spacing_and_variants():
    r = parse_rubric("\n  1)  [ weight = 1 ]  A b c\n\n2. [W=3e-1] Second one\n")
    assert r.ok
    assert [c.weight for c in r.rubric.criteria] == pytest.approx([1 / 1.3, 0.3 / 1.3])


def test_round_trip():
    rub = Rubric("q", [Criterion("Escalates step 2.", 0.25), Criterion("Keeps conf>0.9 steps.", 0.75)])
    back = parse_rubric(format_rubric(rub), "q").rubric
    assert [(c.text, round(c.weight, 6)) for c in back.criteria] == [(c.text, c.weight) for c in rub.criteria]


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("   \n\n \t", "empty"),
    (None, "not text"),
    (b"1. [w=1] bytes", "not text"),
    (42, "not text"),
    ("The route escalates step 3.", "line 1 is not"),
    ("1. The route escalates step 3.", "line 1 is not"),
    ("1. [w=0] zero weight", "weight 0 outside"),
    ("1. [w=-0.5] negative", "outside"),
    ("1. [w=nan] not finite", "outside"),
    ("1. [w=inf] not finite", "outside"),
    ("1. [w=1.5] too heavy", "outside"),
    ("1. [w=abc] words", "not a number"),
    ("1. [w=0.5]", "empty text"),
    ("1. [w=0.5] 12345 !!", "no words"),
    ("1. [w=0.5] 12 = 12 = 12", "no words"),
    ("1. [w=0.5] = 12", "no words"),
    ("1. [w=0.5] 7 + 5 =", "no words"),
    ("2. [w=0.5] starts at two", "numbered 2"),
    ("1. [w=0.5] a\n3. [w=0.5] b", "numbered 3"),
    ("1. [w=0.5] Same thing\n2. [w=0.5] same   THING", "repeats"),
    ("1. [w=0.5] bell\x07 char", "control"),
    ("1. [w=0.5] nul\x00", "NUL"),
])
def test_malformed_rejected_with_reason(text, reason):
    r = parse_rubric(text)
    assert not r.ok and r.rubric is None
    assert reason in r.reason, r.reason


def test_limits():
    lim = RubricLimits(max_criteria=2, max_criterion_chars=20, max_total_chars=200)
    assert "too many" in parse_rubric("1. [w=1] a\n2. [w=1] b\n3. [w=1] c", limits=lim).reason
    assert "too long" in parse_rubric("1. [w=1] " + "x" * 21, limits=lim).reason
    assert "too long" in parse_rubric("1. [w=1] ok\n" + " " * 300, limits=lim).reason


def test_adversarial_never_crashes():
    huge = "1. [w=0.5] " + "é" * 5_000_000
    assert "too long" in parse_rubric(huge).reason
    nested = "1. [w=" + "[" * 10_000 + "] x"
    assert not parse_rubric(nested).ok
    assert not parse_rubric("\ud800 lone surrogate").ok
    for junk in ["🙂" * 50, "1. [w=0.5] " + "🙂" * 10, "\u202e1. [w=1] rtl", "1.[w=1]a\r\n2.[w=1]b", "\x1b[31m"]:
        r = parse_rubric(junk)
        assert isinstance(r.reason, str)
    # unicode words are text: accepted
    r = parse_rubric("1. [w=1] Eskaliert Schritt drei (Übergang).")
    assert r.ok and math.isclose(r.rubric.criteria[0].weight, 1.0)


def test_prune_keeps_at_least_one():
    rub = parse_rubric(VALID, "q").rubric
    p = prune_rubric(rub, {"confident steps stay small."})
    assert [c.text for c in p.criteria] == ["The route escalates step 3."] and p.criteria[0].weight == 1.0
    assert prune_rubric(rub, {"the route escalates step 3.", "confident steps stay small."}) is rub


def test_arithmetic_checkpoints_parse():
    """The toy worlds' checkpoint rubrics (reference steps, no letters in the unlabelled world) parse."""
    r = parse_rubric("1. [w=0.33] 7 + 5 = 12\n2. [w=0.33] 12 - 19 = -7\n3. [w=0.33] (2 * 3) / 4 = 1.5\n")
    assert r.ok, r.reason
    assert [c.text for c in r.rubric.criteria] == ["7 + 5 = 12", "12 - 19 = -7", "(2 * 3) / 4 = 1.5"]


def test_steps_format_round_trips_with_equal_weights():
    """``steps``: the toy models' solution format, one criterion per blank-line-separated step."""
    from roro_jax.rubric.format import format_steps, parse_steps

    rub = Rubric("q", [Criterion("7 + 5 = 12", 0.2), Criterion("12 - 3 = 9", 0.8)])
    text = format_steps(rub)
    assert text == "7 + 5 = 12\n\n12 - 3 = 9"
    back = parse_steps(text, "q")
    assert back.ok and back.rubric.raw == text and back.rubric.query_id == "q"
    assert [(c.text, c.weight) for c in back.rubric.criteria] == [("7 + 5 = 12", 0.5), ("12 - 3 = 9", 0.5)]
    # the numbered grammar is not the steps format, and the other way round
    assert not parse_rubric(text).ok
    assert parse_steps("1. [w=0.5] 7 + 5 = 12").rubric.criteria[0].text == "1. [w=0.5] 7 + 5 = 12"


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("\n\n  \n", "empty"), (None, "not text"), ("a\x00b", "NUL"),
    ("1 + 1 = 2\n\n2 + 1 = 3\n\n3 + 1 = 4\n\n4 + 1 = 5\n\n5 + 1 = 6", "too many criteria"),
    ("7 + 5 = 12\n\n7 + 5 =  12", "repeats"), ("7 + 5 = 12\n\n!!", "criterion 2: no words"),
    ("x" * 81, "too long"),
])
def test_steps_format_rejects_what_the_numbered_grammar_rejects(text, reason):
    from roro_jax.rubric.format import parse_steps

    r = parse_steps(text, "q", RubricLimits(max_criteria=4, max_criterion_chars=80))
    assert not r.ok and r.rubric is None and reason in r.reason, r.reason


def test_rubric_formats_registry():
    from roro_jax.rubric.format import RUBRIC_FORMATS, get_format

    assert set(RUBRIC_FORMATS) >= {"numbered", "steps"}
    rub = Rubric("q", [Criterion("Escalates step 2.", 0.25), Criterion("7 + 5 = 12", 0.75)])
    for name, fmt in RUBRIC_FORMATS.items():
        back = fmt.parse(fmt.write(rub), "q", RubricLimits())
        assert back.ok and [c.text for c in back.rubric.criteria] == [c.text for c in rub.criteria], name
    with pytest.raises(KeyError, match="unknown rubric format 'nope'"):
        get_format("nope")
