"""The whole RoRo pipeline: ``roro demo`` on the toy world (shipped toy models, on a CPU) and
``roro eval`` on the live world (real models behind ``engines``, e.g. vLLM servers; a shipped benchmark).

Stages (each a plain call into the library; everything is written under ``cfg.out_dir``):

1. **exploration**: the exploration suite (random rates, confidence thresholds, critical-first windows,
   anti-critical controls) routes ``explore_problems`` (``toy.`` / ``live.``) training problems through the
   stepwise rollout
   (toy: Flax engines with the shipped SRM/LRM; live: ``engines.small/large``) →
   ``exploration/trajectories.jsonl``;
2. **pairs**: outcome / cost / process preference pairs per query → ``pairs.jsonl``, ``pairs_stats.json``;
3. **rubric**: Judge and Rubricor trained alternately with the validation gate → ``rubric/`` (gate log,
   checkpoints, ``results.json``); the final Judge under each query's rubric is RoRo's process reward;
4. **routers**: for every λ_c in ``sweep.lambda_c``, outcome-only GRPO (λ_p = 0) and RoRo (λ_p =
   ``reward.weights.process``) train online on the explored problems → ``routers/<method>_lc<λ>/``;
5. **evaluation**: SRM-only, LRM-only, random(p), confidence threshold, STEER (GMM fitted on the
   exploration's step confidences), GRPO and RoRo routers on held-out test problems → ``report/``
   (``report.md``, ``curves.png``, ``summary.json``, ``points.jsonl``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines import toy as T
from pipelines.rubric import jsonable, process_scorer, run_rubric_stage
from roro_jax.eval.records import point_from_trajectories
from roro_jax.eval.report import write_report
from roro_jax.jsonio import atomic_write_json
from roro_jax.pairs import build_pairs_with_stats, write_pairs
from roro_jax.router.baselines import SteerPolicy, fit_gmm2, lrm_only, srm_only
from roro_jax.router.baselines import ConfidenceThreshold, RandomPolicy
from roro_jax.router.exploration import exploration_suite
from roro_jax.router.policies import RouterPolicy
from roro_jax.store import TrajectoryStore
from roro_jax.types import Trajectory
from roro_jax.worlds.base import get_world

METHODS = {"GRPO": "GRPO (outcome+cost)", "RoRo": "RoRo (outcome+process+cost)"}


def quick_overrides() -> list[str]:
    """What ``--quick`` changes: every stage still runs, each on a few problems / steps."""
    return ["toy.explore_problems=24", "toy.test_problems=48", "toy.queries_per_update=4", "train.updates=3",
            "grpo.group_size=4", "sweep.lambda_c=[0.3]", "sweep.random_rates=[0.3]", "sweep.thresholds=[0.99]",
            "sweep.gammas=[0.5]", "exploration.random_rates=[0.3]", "exploration.thresholds=[0.99]",
            "exploration.critical_k=[1]", "exploration.anti_k=[1]", "rubric.rounds=1", "rubric.judge.steps=8",
            "rubric.rubricor.sft_steps=8", "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=4",
            "rubric.rubricor.max_new_tokens=64", "eval.n_boot=100"]


def step_confidences(trajs: Sequence[Trajectory]) -> np.ndarray:
    return np.array([s.confidence for t in trajs for s in t.steps if s.confidence is not None], np.float64)


def _router_cfg(cfg, out: Path, method: str, lam: float):
    w = dict(cfg.reward.weights)
    w["cost"] = float(lam)
    if method == "GRPO":
        w["process"] = 0.0
    elif not w.get("process"):
        raise ValueError("RoRo needs reward.weights.process > 0")
    return dataclasses.replace(cfg, out_dir=str(out / "routers" / f"{method}_lc{lam:g}"),
                               reward=dataclasses.replace(cfg.reward, weights=w))


def world_inputs(cfg):
    """The world's engines and training / test problems (:class:`roro_jax.worlds.base.World`); a world
    without them (synthetic, replay) is a :class:`~roro_jax.worlds.base.WorldError`."""
    W = get_world(cfg.world)
    for what in ("make_engines", "train_problems", "test_problems"):
        W.require(what, "the RoRo pipeline")
    return W


def explore_problems(cfg, W=None) -> list:
    """The first ``<world>.explore_problems`` training problems."""
    W = W or world_inputs(cfg)
    return W.train_problems(cfg)[:W.settings(cfg).explore_problems]


def collect_stage(cfg) -> Path:
    """``roro collect`` on a world with engines and problems (toy, live)."""
    W = world_inputs(cfg)
    return T.collect_exploration_stage(cfg, W.make_engines(cfg), explore_problems(cfg, W))


def pairs_stage(cfg, trajs: Sequence[Trajectory], out: Path, queries: dict[str, str] | None = None):
    """Stage 2: preference pairs of the explored routes → ``pairs.jsonl`` + ``pairs_stats.json``
    (``queries``: id → text, read by ``pairs.process_label=checkpoints``)."""
    pairs, stats = build_pairs_with_stats(trajs, cfg.pairs, seed=cfg.seed, queries=queries)
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(out / "pairs.jsonl", pairs)
    atomic_write_json(out / "pairs_stats.json", stats, indent=1, default=str)
    return pairs, stats


def rubric_stage(cfg, trajs: Sequence[Trajectory], pairs, queries: dict[str, str], out: Path, *, log=print):
    """Stage 3: Judge/Rubricor alternation with the gate → ``rubric/`` (gate log, checkpoints,
    ``results.json``). Returns the JSON-able results and the live objects (Judge, Rubricor, rubric book)."""
    rc = dataclasses.replace(cfg.rubric, seed=cfg.seed, out_dir=str(out / "rubric"))
    res = run_rubric_stage(rc, trajs, pairs, queries, log=log)
    objects = res.pop("objects")
    (out / "rubric").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "rubric" / "results.json", jsonable(res), indent=1, default=str)
    return jsonable(res), objects


def train_router(cfg, *, resume: bool = True, progress: bool = True):
    """``roro router`` on the toy / live world: one router with ``cfg.reward.weights`` on the explored
    problems. With a process weight, the exploration (resumed from ``out_dir``), pairs and rubric stages run
    first and the process term is ``reward.process_scorer`` (RoRo: the rubric Judge)."""
    W = world_inputs(cfg)
    engines = W.make_engines(cfg)
    explore = explore_problems(cfg, W)
    process_fn = None
    if dict(cfg.reward.weights).get("process", 0.0):
        out = Path(cfg.out_dir)
        queries = {str(p.id): p.question for p in explore}
        trajs = list(TrajectoryStore(T.collect_exploration_stage(cfg, engines, explore, progress=progress)).iter())
        pairs, _ = pairs_stage(cfg, trajs, out, queries)
        _, objects = rubric_stage(cfg, trajs, pairs, queries, out)
        process_fn = process_scorer(cfg.reward.process_scorer, objects, queries)
        cfg = dataclasses.replace(cfg, out_dir=str(out / "router"))
    return T.train_router_toy(cfg, engines, problems=explore, process_fn=process_fn, resume=resume,
                              progress=progress, desc=f"router GRPO ({cfg.world})")


def eval_pipeline(cfg) -> dict[str, dict]:
    """``roro eval`` on the toy / live world: the whole pipeline; ``{world: report paths}``."""
    return {cfg.world: run_roro(cfg)["paths"]}


def run_roro(cfg, *, progress: bool = True, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    t0 = time.time()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def done(stage: str, msg: str) -> None:
        times[stage] = time.time() - t0 - sum(times.values())
        console.print(f"[bold green]✓[/] {stage}: {msg} [dim]({times[stage]:.0f} s)[/]")

    W = world_inputs(cfg)
    engines = W.make_engines(cfg)
    explore = explore_problems(cfg, W)
    test = W.test_problems(cfg)
    queries = {str(p.id): p.question for p in explore}

    # 1. exploration
    suite = exploration_suite(cfg.exploration)
    trajs = list(TrajectoryStore(T.collect_exploration_stage(cfg, engines, explore, progress=progress)).iter())
    done("exploration", f"{len(trajs)} trajectories, {len(suite)} policies × {len(explore)} problems, "
                        f"accuracy {np.mean([bool(t.correct) for t in trajs]):.3f}")

    # 2. pairs
    pairs, _ = pairs_stage(cfg, trajs, out, queries)
    kinds = {k: sum(p.kind == k for p in pairs) for k in ("outcome", "cost", "process")}
    done("pairs", f"{len(pairs)} pairs ({', '.join(f'{k} {n}' for k, n in kinds.items())})")

    # 3. rubric stage
    res, objects = rubric_stage(cfg, trajs, pairs, queries, out, log=lambda m: console.print(f"  [dim]{m}[/]"))
    final = res["phases"][-1]["test"]["acc"]
    done("rubric", f"held-out pair accuracy: rule-based {res['process_quality']['test']['acc']:.3f}, "
                   + (f"no-rubric Judge {res['no_rubric']['test']['acc']:.3f}, " if "no_rubric" in res else "")
                   + f"rubric Judge {final:.3f}")
    process_fn = process_scorer(cfg.reward.process_scorer, objects, queries)

    # 4. routers
    routers: dict[tuple[str, float], Any] = {}
    for lam in cfg.sweep.lambda_c:
        for method in METHODS:
            rcfg = _router_cfg(cfg, out, method, lam)
            learner, hist = T.train_router_toy(rcfg, engines, problems=explore,
                                               process_fn=process_fn if method == "RoRo" else None,
                                               progress=progress, desc=f"{method} λ_c={lam:g}")
            routers[(method, lam)] = learner
    done("routers", f"{len(routers)} routers × {cfg.train.updates} updates "
                    f"({W.settings(cfg).queries_per_update} queries × G={cfg.grpo.group_size})")

    # 5. evaluation on held-out problems: every policy routed concurrently
    gmm = fit_gmm2(step_confidences(trajs))
    specs: list[tuple[str, Any, str, str, Any]] = [("SRM-only", None, "", "srm", srm_only()),
                                                   ("LRM-only", None, "", "lrm", lrm_only())]
    specs += [("random", r, "rate", "method", RandomPolicy(r, seed=cfg.seed)) for r in cfg.sweep.random_rates]
    specs += [("confidence-threshold", th, "threshold", "method", ConfidenceThreshold(th))
              for th in cfg.sweep.thresholds]
    specs += [("STEER", g, "gamma", "method", SteerPolicy(gmm, g)) for g in cfg.sweep.gammas]
    for (method, lam), learner in routers.items():
        label = METHODS[method]
        if method == "RoRo" and cfg.reward.process_scorer != "judge":
            label = f"RoRo, {cfg.reward.process_scorer} process score (ablation)"
        specs.append((label, lam, "lambda_c", "method",
                      RouterPolicy(learner, learner.params, greedy=True, policy_id=f"{method}_lc{lam:g}")))
    routed = T.route_many(cfg, engines, test, [s[4] for s in specs], seed=cfg.seed + 777, progress=progress,
                          desc="evaluation")
    points = [point_from_trajectories(name, routed[pol.policy_id], param=param, param_name=pname, role=role,
                                      small_params=engines.small.n_params, large_params=engines.large.n_params)
              for name, param, pname, role, pol in specs]
    ecfg = dataclasses.replace(cfg.eval, title=f"{cfg.world} world, held-out problems")
    paths = write_report(points, out / "report", ecfg)
    done("evaluation", f"{len(specs)} operating points on {len(test)} held-out problems")

    table = Table(title=f"{cfg.world} world: {len(test)} held-out problems (seed {cfg.seed})")
    for col in ("method", "param", "accuracy", "large share"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for p in points:
        table.add_row(p.method, "" if p.param is None else f"{p.param_name}={p.param:g}", f"{p.accuracy:.3f}",
                      f"{p.large_share:.3f}")
    console.print(table)
    summary = json.loads(paths["summary"].read_text())
    atomic_write_json(out / "timings.json", {**times, "total": time.time() - t0}, indent=1)
    console.print(f"report: {paths['report']}  plot: {paths['plot']}  ({time.time() - t0:.0f} s)")
    return {"points": points, "paths": paths, "summary": summary, "rubric": res, "times": times}
