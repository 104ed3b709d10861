"""Rule-based teacher rubrics: criteria computed from a query's trajectory statistics.

Each criterion template (:data:`TEMPLATES`, extend with :func:`register_template`) has

* ``params(probe)`` — its parameters from the query's probe trajectory (the small model's confidence
  profile, :func:`~roro_jax.rubric.serialize.probe_trajectory`), or None when it does not apply;
* ``text(params)`` — the sentence in the rubric;
* ``check(traj, params)`` — a programmatic satisfaction score in [0, 1] of a trajectory.

Templates: timely escalation of the first confidence drop (``escalate_drop``), escalation of
low-confidence steps (``escalate_low``), no escalation of confident steps (``keep_confident``), recovery
after an escalation (``recover``), budget use (``budget``), and who writes the final step
(``large_final`` / ``small_final``).

:func:`teacher_rubric` builds a query's rubric: every applicable template's check is scored on the
query's *training* pairs (pairwise accuracy, ties 1/2); templates beating chance get weight
``accuracy − 1/2`` (normalised), the best ``max_criteria`` are kept. Without pairs (or when none beats
chance) the default set (drop, keep-confident, budget) with equal weights is used. These rubrics are the
Rubricor's SFT targets and, read with their checks, a rule-based scorer (:func:`rule_scores`).

**Checkpoint rubrics** (:func:`checkpoint_rubric`, teacher ``checkpoints``; toy worlds) come from the
problem itself: one criterion per reference step, the text a correct solution writes there, so a Judge can
hold a route against them. :func:`checkpoint_scores` reads them with the checker: the oracle process score.
:data:`TEACHERS` maps ``rubric.teacher`` names to teachers (:func:`register_teacher` adds one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from roro_jax.router.exploration import first_drop
from roro_jax.types import ESCALATE, LARGE, Criterion, PreferencePair, Rubric, Trajectory


@dataclass(frozen=True)
class Template:
    name: str
    params: Callable[[Trajectory | None], Any]
    text: Callable[[Any], str]
    check: Callable[[Trajectory, Any], float]


TEMPLATES: dict[str, Template] = {}


def register_template(t: Template) -> Template:
    TEMPLATES[t.name] = t
    return t


def _confs(traj: Trajectory) -> list[float]:
    return [float(s.confidence) if s.confidence is not None else 1.0 for s in traj.steps]


def _esc(traj: Trajectory) -> list[bool]:
    return [s.action == ESCALATE for s in traj.steps]


def drop_step(probe: Trajectory | None, drop: float = 0.15) -> int | None:
    """The probe's first sharp confidence drop (the exploration policies' rule), else its least confident step."""
    if probe is None or not probe.steps:
        return None
    c = _confs(probe)
    d = first_drop(np.array(c[:-1]), c[-1], drop=drop) if len(c) > 1 else None
    return int(np.argmin(c)) if d is None else int(d)


def _frac(sel: list[bool], of: list[bool], empty: float) -> float:
    n = sum(of)
    return empty if n == 0 else sum(a and b for a, b in zip(sel, of)) / n


register_template(Template(
    "escalate_drop", lambda p: drop_step(p),
    lambda k: f"Escalates step {k + 1}.",
    lambda tr, k: float(k < len(tr.steps) and tr.steps[k].action == ESCALATE)))
register_template(Template(
    "escalate_low", lambda p: 0.5,
    lambda thr: f"Escalates conf<{thr:.1f} steps.",
    lambda tr, thr: _frac(_esc(tr), [c < thr for c in _confs(tr)], 1.0)))
register_template(Template(
    "keep_confident", lambda p: 0.9,
    lambda thr: f"Keeps conf>{thr:.1f} steps.",
    lambda tr, thr: 1.0 - _frac(_esc(tr), [c > thr for c in _confs(tr)], 0.0)))
register_template(Template(
    "recover", lambda p: None if p is None or len(p.steps) < 2 else 1,
    lambda _: "Returns to small after.",
    lambda tr, _: _frac([not e for e in _esc(tr)[1:]] + [False], _esc(tr)[:-1] + [False], 1.0)))
register_template(Template(
    "budget", lambda p: 30,
    lambda pct: f"Large share under {pct}%.",
    lambda tr, pct: float(tr.large_share * 100 < pct)))
register_template(Template(
    "large_final", lambda p: 1,
    lambda _: "Large writes last step.",
    lambda tr, _: float(bool(tr.steps) and (tr.steps[-1].model == LARGE or tr.steps[-1].action == ESCALATE))))
register_template(Template(
    "small_final", lambda p: 1,
    lambda _: "Small writes last step.",
    lambda tr, _: float(bool(tr.steps) and not (tr.steps[-1].model == LARGE or tr.steps[-1].action == ESCALATE))))

DEFAULT_SET = ("escalate_drop", "keep_confident", "budget")


def pair_accuracy(pref: Sequence[float], rej: Sequence[float]) -> float:
    """Share of pairs with pref > rej, ties counting 1/2 (NaN without pairs)."""
    p, r = np.asarray(pref, float), np.asarray(rej, float)
    if p.size == 0:
        return float("nan")
    return float(np.mean((p > r) + 0.5 * (p == r)))


def teacher_rubric(query_id: str, probe: Trajectory | None, pairs: Sequence[PreferencePair] = (),
                   by_id: dict[str, Trajectory] | None = None, *, max_criteria: int = 4,
                   templates: Sequence[str] | None = None) -> tuple[Rubric, list[tuple[str, Any]]]:
    """The query's teacher rubric and its ``(template name, params)`` list (see the module docstring)."""
    names = list(templates or TEMPLATES)
    cands = []
    for name in names:
        tpl = TEMPLATES[name]
        prm = tpl.params(probe)
        if prm is None:
            continue
        acc = float("nan")
        if pairs and by_id is not None:
            pv = [tpl.check(by_id[p.preferred], prm) for p in pairs]
            rv = [tpl.check(by_id[p.rejected], prm) for p in pairs]
            acc = pair_accuracy(pv, rv)
        cands.append((name, prm, acc))
    good = [(n, p, a - 0.5) for n, p, a in cands if a == a and a > 0.5]
    good.sort(key=lambda x: -x[2])
    good = good[:max_criteria]
    if not good:
        good = [(n, p, 1.0) for n, p, _ in cands if n in DEFAULT_SET][:max_criteria]
    total = sum(w for _, _, w in good)
    crit = [Criterion(TEMPLATES[n].text(p), round(w / total, 2) or 0.01) for n, p, w in good]
    s = sum(c.weight for c in crit)
    crit = [Criterion(c.text, c.weight / s) for c in crit]
    return Rubric(str(query_id), crit), [(n, p) for n, p, _ in good]


def rule_scores(trajs: Sequence[Trajectory], spec: Sequence[tuple[str, Any]], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of template checks per trajectory (the teacher rubric read by rules), in [0, 1]."""
    w = np.asarray(weights, float)
    w = w / w.sum() if w.sum() > 0 else w
    out = np.zeros(len(trajs))
    for (name, prm), wk in zip(spec, w):
        out += wk * np.array([TEMPLATES[name].check(t, prm) for t in trajs])
    return out


# ------------------------------------------------------------------------------ checkpoint rubrics

def reference_steps(query: str) -> list[str] | None:
    """The reference operation steps of a toy question (``roro_jax.tasks.toy``), or None if the query is
    not a toy expression (then no checkpoints can be computed from the problem)."""
    from roro_jax.tasks import toy

    try:
        values, ops = toy.parse_expression(query)
    except ValueError:
        return None
    if toy.is_labelled(query):
        reds = toy.evaluate(values, ops, labels=True)
    else:
        reds = toy.evaluate(values, ops, "left_to_right")
    return None if reds is None else [r.text for r in reds]


def checkpoint_rubric(query_id: str, query: str, *, max_criteria: int = 6) -> Rubric | None:
    """The query's *checkpoint* rubric: one criterion per reference step, its text the step a correct
    solution writes there (``"b 10 + 6 = 16"``), equal weights. The ground truth comes from the task (the
    problem's own reference evaluation). A route passes a checkpoint when its kept step there reads the
    same. With more reference steps than ``max_criteria`` the last ``max_criteria`` are kept (the final
    value is always a checkpoint). None if the query is not a toy problem."""
    ref = reference_steps(query)
    if not ref:
        return None
    ref = ref[-max_criteria:]
    return Rubric(str(query_id), [Criterion(t, 1.0 / len(ref)) for t in ref])


def checkpoint_scores(trajs: Sequence[Trajectory], queries: dict[str, str]) -> np.ndarray:
    """The *oracle* process score from the checker: the share of a route's reference steps that its kept
    steps match, position by position (``"Answer: N"`` counts as one more reference step), in [0, 1].

    A route that keeps a wrong step and is repaired later (a lucky answer) loses the wrong step's share;
    a route that stops early loses the missing steps'. Only toy problems have reference steps.
    """
    from roro_jax.tasks import toy

    out = np.zeros(len(trajs))
    for i, t in enumerate(trajs):
        q = queries[t.query_id]
        ref = reference_steps(q)
        if ref is None:
            raise ValueError(f"oracle process score: query {t.query_id} ({q!r}) is not a toy problem")
        values, ops = toy.parse_expression(q)
        ref = ref + [f"{toy.ANSWER_PREFIX}{toy.evaluate(values, ops)[-1].result}"]
        kept = [" ".join(s.text.split()) for s in t.steps if s.text.strip()]
        out[i] = sum(k == r for k, r in zip(kept, ref)) / len(ref)
    return out


# ---------------------------------------------------------------------------------- registry

def _profile_teacher(query_id, query, probe, pairs=(), by_id=None, *, max_criteria=4):
    return teacher_rubric(query_id, probe, pairs, by_id, max_criteria=max_criteria)[0]


def _checkpoint_teacher(query_id, query, probe, pairs=(), by_id=None, *, max_criteria=4):
    rub = checkpoint_rubric(query_id, query, max_criteria=max_criteria)
    return rub if rub is not None else _profile_teacher(query_id, query, probe, pairs, by_id,
                                                        max_criteria=max_criteria)


# rubric.teacher -> (query id, query text, probe trajectory, training pairs, trajectories by id, *,
# max_criteria) -> Rubric. ``profile``: rule templates fitted on the small model's confidence profile;
# ``checkpoints``: the reference steps of the problem (toy worlds; other queries fall back to ``profile``).
TEACHERS: dict[str, Callable[..., Rubric]] = {"profile": _profile_teacher, "checkpoints": _checkpoint_teacher}


def register_teacher(name: str, fn: Callable[..., Rubric]) -> Callable[..., Rubric]:
    TEACHERS[name] = fn
    return fn


def get_teacher(name: str) -> Callable[..., Rubric]:
    if name not in TEACHERS:
        raise KeyError(f"unknown rubric teacher {name!r}; known: {sorted(TEACHERS)}")
    return TEACHERS[name]
