"""Trajectory serialisation and its truncation rule."""

import re

from roro_jax.rubric.serialize import (SerializeConfig, query_summary, serialize_query, serialize_steps,
                                       serialize_trajectory, step_priority)
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL, Step, Trajectory


def traj(confs, esc=(), qid="q", pid="p", correct=True):
    steps = [Step(index=i, text=f"step {i} text", model=LARGE if i in esc else SMALL,
                  action=ESCALATE if i in esc else KEEP, confidence=c, prm_score=0.55,
                  small_tokens=10, large_tokens=20 if i in esc else 0) for i, c in enumerate(confs)]
    return Trajectory(qid, 0, pid, steps, correct=correct)


def test_compact_full():
    t = traj([0.95, 0.42, None, 0.99], esc=(1,))
    assert serialize_trajectory(t) == "n4 e1 L20 S40 f5\ns9L4s-s9"


def test_truncation_keeps_first_last_escalated_and_fits():
    confs = [0.9] * 30
    confs[12] = 0.1   # least confident, not escalated
    t = traj(confs, esc=(20,))
    cfg = SerializeConfig(max_chars=20, keep_first=2, keep_last=2)
    out = serialize_steps(t, cfg)
    assert len(out) <= 20
    assert out.startswith("s9s9") and out.endswith("s9s9")
    assert "L9" in out  # the escalated step survives
    # omitted counts add up with the kept glyphs to the whole trajectory
    kept = len(re.findall(r"[sL][0-9-]", out))
    omitted = sum(int(k) for k in re.findall(r"~(\d+)", out))
    assert kept + omitted == 30
    order = step_priority(t, 2, 2)
    assert order[:5] == [0, 1, 28, 29, 20] and order[5] == 12


def test_tiny_budget_never_exceeded():
    t = traj([0.5] * 30, esc=(3, 4))
    for budget in (0, 1, 3, 7, 11):
        assert len(serialize_steps(t, SerializeConfig(max_chars=budget))) <= budget


def test_verbose_style_with_text():
    t = traj([0.95, 0.42], esc=(1,))
    out = serialize_trajectory(t, SerializeConfig(style="verbose", max_chars=10_000, step_text_chars=4))
    assert "Step 2 [large, escalated] conf=0.42 prm=0.55 tokens=20: step..." in out
    assert "Step 1 [small, kept] conf=0.95" in out


def test_query_and_summary():
    assert serialize_query("  a   b\nc ", SerializeConfig(query_chars=24)) == "a b c"
    assert serialize_query("x" * 40, SerializeConfig(query_chars=10)) == "x" * 7 + "..."
    ts = [traj([0.9, 0.3, 0.8], esc=(1,), pid="a", correct=True), traj([0.9, 0.3, 0.8], pid="b", correct=False)]
    s = query_summary(ts)
    assert s == "n3 938"  # the fewest-escalation trajectory's confidence profile, no outcome
    assert query_summary([]) == "none"
