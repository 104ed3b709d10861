"""Lucky answers in a toy world's routes: how many correct routes kept a wrong small step, and what a later
escalation does after a kept wrong step.

``python -m pipelines.route_counts runs/x/exploration/trajectories.jsonl`` prints the counts (``--json`` for
a JSON object). Steps are judged by the labels the toy worlds put on every trajectory
(``meta["wrong_steps"]``, :func:`roro_jax.tasks.toy.step_labels`): a route *kept a wrong step* when one of
those steps was kept (not escalated). A *lucky answer* is a correct route that kept a wrong step: the credit
an outcome reward gives it goes in part to keeping that step. The *lucky* world is built to make them on
its training problems (``roro_jax/assets/toy/README.md``); ``benchmarks/RESULTS.md`` quotes these counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable

from roro_jax.types import ESCALATE, KEEP, Trajectory


def route_flags(t: Trajectory) -> tuple[bool, bool]:
    """``(kept a wrong step, escalated a step after the first kept wrong step)`` for one labelled route."""
    if "wrong_steps" not in t.meta:
        raise ValueError(f"trajectory {t.query_id}/{t.policy_id}/{t.sample_idx} has no step labels "
                         "(meta['wrong_steps']): only the toy worlds label their steps")
    kept = [i for i in t.meta["wrong_steps"] if t.steps[i].action == KEEP]
    return bool(kept), bool(kept) and any(s.action == ESCALATE for s in t.steps[kept[0] + 1:])


def route_counts(trajs: Iterable[Trajectory]) -> dict[str, int]:
    """``routes``, ``correct``; ``kept_wrong`` (routes that kept a wrong step) and ``lucky`` (of them, the
    correct ones); ``escalated_after`` (routes that escalated a step after their first kept wrong step) and
    ``repaired`` (of them, the correct ones). Raises ``ValueError`` for a trajectory without step labels."""
    c = dict.fromkeys(("routes", "correct", "kept_wrong", "lucky", "escalated_after", "repaired"), 0)
    for t in trajs:
        kept, late = route_flags(t)
        c["routes"] += 1
        c["correct"] += bool(t.correct)
        c["kept_wrong"] += kept
        c["lucky"] += kept and bool(t.correct)
        c["escalated_after"] += late
        c["repaired"] += late and bool(t.correct)
    return c


def main(argv=None) -> dict[str, int]:
    from roro_jax.store import TrajectoryStore

    ap = argparse.ArgumentParser(prog="python -m pipelines.route_counts", description=__doc__.split("\n\n")[0])
    ap.add_argument("trajectories", help="a trajectory store (JSONL) of a toy world")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not Path(a.trajectories).is_file():
        ap.error(f"{a.trajectories}: no such trajectory store")
    c = route_counts(TrajectoryStore(a.trajectories).iter())
    if a.json:
        print(json.dumps(c))
    else:
        print(f"{c['routes']} routes, {c['correct']} correct; {c['kept_wrong']} kept a wrong step, {c['lucky']} of them "
              f"correct (lucky answers: {c['lucky'] / max(c['correct'], 1):.1%} of the correct routes); "
              f"{c['escalated_after']} escalated a later step, {c['repaired']} of them correct")
    return c


if __name__ == "__main__":
    main()
