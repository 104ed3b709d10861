"""``roro demo``: the pipeline end to end on a built-in world (``world`` in the config).

- ``toy`` (``configs/demo.yaml``, what ``make demo`` runs): the whole RoRo pipeline with the shipped toy
  models, see :mod:`pipelines.roro`;
- ``synthetic``: GRPO routers over a λ_c sweep on the synthetic routing world
  (``roro_jax.worlds.synthetic``) against SRM-only, LRM-only, random escalation and a confidence threshold,
  with exact expected accuracy (P(correct) = (1 - fail_prob)^(critical steps kept)).

``--quick`` runs every stage on a few problems / updates (CI).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines.router_synthetic import train_router_synthetic
from roro_jax.eval.records import CurvePoint
from roro_jax.eval.report import write_report
from roro_jax.worlds import synthetic
from roro_jax.worlds.base import get_world

FAIL_PROB = 0.9


def _point(method, actions, q, *, param=None, param_name="", role="method") -> CurvePoint:
    mask = np.asarray(q.mask) > 0
    crit = np.asarray(q.critical)
    a = np.asarray(actions).astype(bool) & mask
    kept_crit = (crit & ~a).sum(-1)
    correct = (1.0 - FAIL_PROB) ** kept_crit
    large = a.sum(-1).astype(float)
    total = mask.sum(-1).astype(float)
    return CurvePoint(method=method, accuracy=float(correct.mean()), large_share=float(large.sum() / total.sum()),
                      n=len(correct), param=param, param_name=param_name, role=role,
                      problem_ids=[f"q{i}" for i in range(len(correct))], correct=correct.tolist(),
                      large_tokens=large.tolist(), total_tokens=total.tolist())


def demo_config(path=None, overrides=(), quick: bool = False):
    """The demo's config: ``path`` + ``overrides``; ``quick`` puts the world's quick settings underneath
    the user's overrides (so ``--quick toy.test_problems=64`` still wins)."""
    from roro_jax.config import load_config

    cfg = load_config(path, overrides)
    quick_overrides = get_world(cfg.world).quick_overrides
    if quick and quick_overrides is not None:
        cfg = load_config(path, [*quick_overrides(), *overrides])
    return cfg


def run_demo(cfg, quick: bool = False, progress: bool = True) -> dict:
    """Run the demo of ``cfg.world`` (``cfg`` from :func:`demo_config`; the world's ``demo``,
    :class:`roro_jax.worlds.base.World`)."""
    return get_world(cfg.world).require("demo")(cfg, quick=quick, progress=progress)


def toy_demo(cfg, *, quick: bool = False, progress: bool = True) -> dict:
    """The toy world's demo: the whole RoRo pipeline (``quick`` is already in ``cfg``)."""
    from pipelines.roro import run_roro

    return run_roro(cfg, progress=progress)


def synthetic_demo(cfg, *, quick: bool = False, progress: bool = True) -> dict:
    return run_synthetic_demo(cfg, quick=quick)


def run_synthetic_demo(cfg, quick: bool = False) -> dict:
    console = Console()
    t0 = time.time()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = cfg.synthetic
    updates = 8 if quick else cfg.train.updates
    lambdas = [0.1, 0.5] if quick else [0.05, 0.15, 0.3, 0.5, 0.8]
    test = synthetic.make_queries(jax.random.PRNGKey(cfg.seed + 12345), 128 if quick else 512, s.steps, s.features)
    conf = np.asarray(test.features[..., 0])
    mask = np.asarray(test.mask)
    rng = np.random.default_rng(cfg.seed)

    points = [_point("SRM-only", np.zeros_like(mask), test, role="srm"),
              _point("LRM-only", np.ones_like(mask), test, role="lrm")]
    for p in [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]:
        points.append(_point("random", rng.random(mask.shape) < p, test, param=p, param_name="rate"))
    for th in [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5]:
        points.append(_point("confidence-threshold", conf < th, test, param=th, param_name="threshold"))

    console.print(f"[bold]roro demo[/] (synthetic world): GRPO routers for λ_c in {lambdas}, {updates} updates each")
    for lam in lambdas:
        run_cfg = dataclasses.replace(
            cfg, out_dir=str(out / f"router_lc{lam}"),
            train=dataclasses.replace(cfg.train, updates=updates),
            reward=dataclasses.replace(cfg.reward, weights={**cfg.reward.weights, "cost": lam, "process": 0.0}))
        learner, _ = train_router_synthetic(run_cfg, resume=False)
        esc = np.asarray(learner.escalate_prob(test.features)) > 0.5
        points.append(_point("GRPO (outcome+cost)", esc, test, param=lam, param_name="lambda_c"))

    paths = write_report(points, out / "report", cfg.eval)
    table = Table(title="synthetic world, held-out queries")
    for col in ("method", "param", "accuracy", "large share"):
        table.add_column(col)
    for p in points:
        table.add_row(p.method, "" if p.param is None else f"{p.param:g}", f"{p.accuracy:.3f}", f"{p.large_share:.3f}")
    console.print(table)
    console.print(f"report: {paths.get('report', out / 'report')}   ({time.time() - t0:.0f} s)")
    return {"points": points, "paths": paths}
