"""The process-reward study: does a learned process reward beat outcome-only reward for routing, and where?

``python -m pipelines.study --world lucky --seeds 0 1 2 3 4`` (``--quick`` for a smoke run) trains and
evaluates these arms on the same problems and seeds in one toy world (:mod:`roro_jax.worlds.variants`):

=============  ==============================================================================================
``outcome``    GRPO with ``R = 1[correct] − λ_c·cost`` (outcome-only, the control arm)
``roro``       RoRo: ``+ λ_p·Judge(route | Rubricor's rubric)`` (the learned Rubricor + Judge of stage 2)
``no_rubric``  ``+ λ_p·Judge(route)``: the same Judge backbone and budget reading no rubric (ablation)
``oracle``     ``+ λ_p·checker(route)``: the share of reference steps the route's kept steps match, read by
               the toy checker (the upper bound a perfect step verifier would give)
``threshold``  the confidence-threshold baseline (a sweep of thresholds; no training)
=============  ==============================================================================================

Protocol (pre-registered in ``benchmarks/RESULTS.md``): per seed, the exploration suite routes the first
``explore`` training problems; pairs; the rubric stage (Judge and Rubricor alternating, gated) and the
no-rubric Judge train on them. Every arm then trains a router for every λ_c of the sweep on those
problems, all routers in lock step: update ``k`` routes the *same* queries with the *same* sampling seeds
for every router (paired), and all routers start from the same initial parameters. λ_p (per process arm)
is chosen on a validation split of the training distribution (disjoint from the training problems) on the
first seed and then fixed. Every router is evaluated greedily, once, on the same ``test`` held-out
problems (the world's test distribution); learning curves evaluate the routers after intermediate numbers
of updates on the first ``curve_test`` test problems.

Outputs under ``--out`` (default ``runs/study/<world>``): ``seed<k>/`` (exploration, pairs, rubric stage,
``result.json`` with every router's per-problem outcomes and costs), ``tuning.json``, ``summary.json``
(per arm and seed: AUC, CPT(80%), accuracy at matched cost (budgets); paired bootstrap intervals of
RoRo − outcome and oracle − outcome; learning curves), ``summary.md`` and ``study.png``. A rerun skips the
seeds whose ``result.json`` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pipelines import toy as T
from pipelines.roro import pairs_stage, rubric_stage
from pipelines.route_counts import route_flags
from pipelines.rubric import process_scorer
from roro_jax.config import load_config
from roro_jax.eval.metrics import curve_metrics_batched
from roro_jax.rl.trainer import RouterLearner, score_trajectories
from roro_jax.rl.reference import reference_params
from roro_jax.rl.update import init_state
from roro_jax.rollout import rollout
from roro_jax.router.baselines import ConfidenceThreshold, lrm_only, srm_only
from roro_jax.router.features import get_family
from roro_jax.router.policies import RouterPolicy
from roro_jax.store import TrajectoryStore
from roro_jax.types import pad_trajectories
from roro_jax.worlds.variants import get_world

# arm -> reward.process_scorer (None: no process term)
ARMS: dict[str, str | None] = {"outcome": None, "roro": "judge", "no_rubric": "no_rubric_judge", "oracle": "oracle"}
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "study.yaml"


@dataclasses.dataclass
class StudyOptions:
    world: str = "control"
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2, 3, 4])
    arms: list[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    lambda_c: list[float] = dataclasses.field(default_factory=lambda: [0.05, 0.2, 0.5, 1.0])
    lambda_p: float = 0.5  # used for every process arm when tuning is off
    lambda_p_grid: list[float] = dataclasses.field(default_factory=lambda: [0.25, 1.0])
    tune: bool = True
    updates: int = 200
    curve_at: list[int] = dataclasses.field(default_factory=lambda: [25, 50, 100])
    explore: int = 64
    queries_per_update: int = 8
    group_size: int = 8
    test: int = 1000
    curve_test: int = 256
    validation: int = 256
    thresholds: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.97, 0.99, 0.995, 0.999])
    budgets: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.2, 0.3])
    n_boot: int = 1000
    out: str = ""


def quick_options(o: StudyOptions) -> StudyOptions:
    """``--quick``: every stage on a handful of problems and updates (CI smoke run)."""
    return dataclasses.replace(o, lambda_c=[0.1, 1.0], lambda_p_grid=[0.5, 1.0], updates=4, curve_at=[2],
                               explore=12, queries_per_update=4, group_size=4, test=24, curve_test=12,
                               validation=12, thresholds=[0.99], n_boot=50)


QUICK_CONFIG = ["exploration.random_rates=[0.3]", "exploration.thresholds=[0.99]", "exploration.critical_k=[1]",
                "exploration.anti_k=[1]", "rubric.judge.steps=4", "rubric.rubricor.sft_steps=4",
                "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=2", "rubric.rubricor.max_new_tokens=48"]


# ------------------------------------------------------------------------------------------- config
def seed_config(base, opts: StudyOptions, seed: int, out: Path):
    """The project config of one seed: the world's models, problems and step limits; the study's sizes."""
    w = get_world(opts.world)
    toy_c = dataclasses.replace(base.toy, variant=opts.world, explore_problems=opts.explore,
                                train_problems=max(base.toy.train_problems, opts.explore),
                                queries_per_update=opts.queries_per_update, test_problems=opts.test)
    roll = dataclasses.replace(base.rollout, max_steps=w.max_steps, max_step_tokens=w.max_step_tokens)
    grpo = dataclasses.replace(base.grpo, group_size=opts.group_size)
    return dataclasses.replace(base, world="toy", seed=seed, out_dir=str(out / f"seed{seed}"), toy=toy_c,
                               rollout=roll, grpo=grpo)


# ------------------------------------------------------------------------------------------- routing
def route_all(cfg, engines, problems, policies, *, group_size: int, seed: int):
    """Route ``problems`` × ``group_size`` with every policy concurrently (one event loop: the engines batch
    the steps of all policies); ``[trajectories per policy]``. A row's sampling seed depends only on (seed,
    query, sample, step), so every policy sees the same small-model proposals on the same prefixes.

    With ``toy.routing: fused`` (the study's config) every policy with a device version routes through the
    fused program (:mod:`roro_jax.engines.fused_routing`: the same trajectories, one jitted program per
    batch of rows); the others, and non-Flax engines, through the host loop."""
    fused = T.fused_router(cfg, engines)
    if fused is not None:
        ids = [p.policy_id for p in policies]
        if len(set(ids)) != len(ids):
            raise ValueError(f"route_all: duplicate policy ids {ids}")
        res = fused.route_many(problems, policies, group_size=group_size, seed=seed, prompt_fn=T.prompt_fn(cfg),
                               annotate=T.annotate_fn(cfg))
        return [res[i] for i in ids]

    async def main():
        return await asyncio.gather(*(rollout(problems, engines.small, engines.large, pol, cfg.rollout,
                                              group_size=group_size, seed=seed, prompt_fn=T.prompt_fn(cfg),
                                              annotate=T.annotate_fn(cfg))
                                      for pol in policies))

    return asyncio.run(main())


@dataclasses.dataclass
class Router:
    """One router of the study: its arm, λ_c, λ_p, process scorer, train state and parameter snapshots."""

    arm: str
    lambda_c: float
    lambda_p: float
    process_fn: Any
    state: Any
    snapshots: dict[int, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arm}_lc{self.lambda_c:g}" + (f"_lp{self.lambda_p:g}" if self.process_fn else "")


def train_lockstep(cfg, engines, learner: RouterLearner, routers: Sequence[Router], problems, *, updates: int,
                   curve_at: Sequence[int], progress: bool = True, desc: str = "routers") -> list[dict]:
    """GRPO for every router in lock step (see the module docstring); returns per-update metrics rows.

    One :class:`RouterLearner` holds the compiled update; each router's state is swapped in for its update.
    """
    from tqdm.auto import tqdm

    G, Q, T_ = cfg.grpo.group_size, cfg.toy.queries_per_update, cfg.rollout.max_steps
    nf = get_family(cfg.router.features).dim
    key = jax.random.PRNGKey(cfg.seed)
    rows = []
    for k in tqdm(range(updates), desc=desc, disable=not progress, leave=False):
        rng = np.random.default_rng((cfg.seed, k))
        qs = [problems[i] for i in rng.choice(len(problems), size=min(Q, len(problems)), replace=False)]
        seed_k = int(rng.integers(2**31))
        pols = [RouterPolicy(learner, r.state.params, policy_id=r.name) for r in routers]
        routed = route_all(cfg, engines, qs, pols, group_size=G, seed=seed_k)
        ku = jax.random.fold_in(key, k)
        for r, trajs in zip(routers, routed):
            arrays = pad_trajectories(trajs, max_steps=T_, n_features=nf)
            rb = T.reward_batch(trajs, r.process_fn)
            weights = {"outcome": 1.0, "cost": r.lambda_c, "process": r.lambda_p if r.process_fn else 0.0}
            rcfg = dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, weights=weights))
            rewards, _, adv = score_trajectories(rb, rcfg)
            batch = {"features": arrays["features"], "actions": arrays["actions"], "old_logp": arrays["logp"],
                     "mask": arrays["mask"], "advantages": np.asarray(adv)}
            learner.state = r.state
            learner.update(batch, ku)
            r.state = learner.state
            rows.append({"update": k + 1, "router": r.name, "reward": float(np.mean(rewards)),
                         "accuracy": float(rb["correct"].mean()), "large_share": float(rb["large_share"].mean()),
                         **({"process": float(np.mean(rb["process"]))} if "process" in rb else {})})
            if k + 1 in curve_at:
                r.snapshots[k + 1] = jax.tree.map(np.array, r.state.params)
    return rows


def outcomes(trajs) -> dict[str, list[float]]:
    """Per problem (in order): correct (share of samples), large-model tokens, kept tokens; in a world
    whose trajectories carry step labels (the toy worlds' ``wrong_steps``), also ``kept_wrong`` (share of
    samples that kept a wrong small step) and ``late_escalation`` (share that escalated a step after a
    kept wrong one: the repair a lucky answer needs)."""
    from roro_jax.eval.records import point_from_trajectories

    p = point_from_trajectories("x", trajs)
    out = {"correct": p.correct, "large": p.large_tokens, "total": p.total_tokens}
    if trajs and all("wrong_steps" in t.meta for t in trajs):
        by_q: dict[str, list[tuple[bool, bool]]] = {}
        for t in trajs:
            by_q.setdefault(str(t.query_id), []).append(route_flags(t))
        order = list(dict.fromkeys(str(t.query_id) for t in trajs))
        out["kept_wrong"] = [float(np.mean([k for k, _ in by_q[q]])) for q in order]
        out["late_escalation"] = [float(np.mean([e for _, e in by_q[q]])) for q in order]
    return out


def evaluate(cfg, engines, learner, policies: dict[str, Any], problems, seed: int) -> dict[str, dict]:
    """Every policy, greedy where it samples, on ``problems`` (one sample each): per-problem outcomes."""
    names = list(policies)
    routed = route_all(cfg, engines, problems, [policies[n] for n in names], group_size=1, seed=seed)
    return {n: outcomes(tr) for n, tr in zip(names, routed)}


# ------------------------------------------------------------------------------------------- one seed
JUDGE_ARMS = ("roro", "no_rubric")  # the arms that need the rubric stage's Judges


def rubric_objects(cfg, engines, out: Path, log=print, *, judges: bool = True):
    """Stages 1-3 on the explored problems: trajectories, pairs, the rubric stage (Judge, Rubricor, no-rubric
    Judge). Returns ``(explored problems, rubric results, objects, queries)``. Without ``judges`` (no arm
    reads a Judge: outcome, oracle) stages 1-3 are skipped: ``(explored problems, None, {}, queries)``."""
    explore = T.train_problems(cfg)[:cfg.toy.explore_problems]
    queries = {str(p.id): p.question for p in explore}
    if not judges:
        return explore, None, {}, queries
    store_path = T.collect_exploration_stage(cfg, engines, explore, progress=False)
    trajs = list(TrajectoryStore(store_path).iter())
    pairs, _ = pairs_stage(cfg, trajs, out, queries)
    res, objects = rubric_stage(cfg, trajs, pairs, queries, out, log=log)
    return explore, res, objects, queries


def make_routers(arms, opts: StudyOptions, lambda_p: dict[str, float], objects, queries, learner: RouterLearner):
    """One router per (arm, λ_c), each with its own copy of the learner's initial state (same parameters for
    every router: the arms start from the same point)."""
    params0 = jax.tree.map(np.array, learner.state.params)
    routers = []
    for arm in arms:
        scorer = ARMS[arm]
        fn = None if scorer is None else process_scorer(scorer, objects, queries)
        for lc in opts.lambda_c:
            p0 = jax.tree.map(np.array, params0)
            state = jax.tree.map(jnp.array, init_state(p0, learner.tx, reference_params(learner.cfg.grpo, p0)))
            routers.append(Router(arm, lc, lambda_p.get(arm, 0.0) if fn else 0.0, fn, state))
    return routers


def router_arm_metrics(res: dict[str, dict], names_by_arm: dict[str, list[str]], srm: dict, lrm: dict,
                       budgets: Sequence[float]) -> dict[str, dict]:
    """Per arm: curve metrics (AUC with endpoints, CPT(80%), accuracy at each budget) from its points."""
    out = {}
    for arm, names in names_by_arm.items():
        c, a = _curve(res, names)
        m = _metrics(c[None], a[None], np.mean(srm["correct"]), np.mean(lrm["correct"]), budgets)
        out[arm] = {k: float(v[0]) for k, v in m.items()}
        out[arm]["points"] = [[float(x), float(y)] for x, y in zip(c, a)]
    return out


def _curve(res, names):
    c = np.array([np.sum(res[n]["large"]) / max(np.sum(res[n]["total"]), 1) for n in names])
    a = np.array([np.mean(res[n]["correct"]) for n in names])
    return c, a


def acc_at_budget(costs: np.ndarray, accs: np.ndarray, acc_srm, budget: float) -> np.ndarray:
    """Accuracy of the upper envelope of each row's points (with the SRM-only point (0, acc_srm)) at cost
    ``budget``: the best accuracy reachable by mixing two operating points whose cost is ≤ the budget
    (linear interpolation along the Pareto front), [B]."""
    B, K = costs.shape
    c = np.concatenate([np.zeros((B, 1)), costs], 1)
    a = np.concatenate([np.broadcast_to(np.asarray(acc_srm, float).reshape(-1, 1), (B, 1)), accs], 1)
    out = np.empty(B)
    for b in range(B):
        best = np.max(a[b][c[b] <= budget])
        for i in range(K + 1):  # interpolate between a point below and one above the budget
            for j in range(K + 1):
                if c[b, i] <= budget < c[b, j]:
                    t = (budget - c[b, i]) / (c[b, j] - c[b, i])
                    best = max(best, a[b, i] + t * (a[b, j] - a[b, i]))
        out[b] = best
    return out


def _metrics(costs, accs, acc_srm, acc_lrm, budgets) -> dict[str, np.ndarray]:
    s = np.broadcast_to(np.asarray(acc_srm, float).reshape(-1), costs.shape[:1])
    l_ = np.broadcast_to(np.asarray(acc_lrm, float).reshape(-1), costs.shape[:1])
    m = curve_metrics_batched(costs, accs, s, l_, xs=(0.8,))
    out = {"auc": m["auc"], "cpt_80": m["cpt_80"]}
    for b in budgets:
        out[f"acc_at_{b:g}"] = acc_at_budget(costs, accs, s, b)
    return out


def run_seed(base, opts: StudyOptions, seed: int, out: Path, engines, lambda_p: dict[str, float], *,
             progress: bool = True, log=print) -> dict[str, Any]:
    cfg = seed_config(base, opts, seed, out)
    sdir = Path(cfg.out_dir)
    sdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    explore, res, objects, queries = rubric_objects(cfg, engines, sdir, log=log,
                                                    judges=any(a in JUDGE_ARMS for a in opts.arms))
    log(f"[seed {seed}] rubric stage done ({time.time() - t0:.0f} s)")
    learner = RouterLearner(cfg, get_family(cfg.router.features).dim)
    routers = make_routers(opts.arms, opts, lambda_p, objects, queries, learner)
    rows = train_lockstep(cfg, engines, learner, routers, explore, updates=opts.updates,
                          curve_at=[k for k in opts.curve_at if k < opts.updates], progress=progress,
                          desc=f"seed {seed}: {len(routers)} routers")
    log(f"[seed {seed}] {len(routers)} routers × {opts.updates} updates ({time.time() - t0:.0f} s)")
    test = T.test_problems(cfg)
    pols = {"srm": srm_only(), "lrm": lrm_only()}
    pols.update({f"threshold_{th:g}": ConfidenceThreshold(th) for th in opts.thresholds})
    pols.update({r.name: RouterPolicy(learner, r.state.params, greedy=True, policy_id=r.name) for r in routers})
    final = evaluate(cfg, engines, learner, pols, test, seed=cfg.seed + 777)
    curves = {}
    sub = test[:opts.curve_test]
    for k in sorted({k for r in routers for k in r.snapshots}):
        cp = {f"{r.name}@{k}": RouterPolicy(learner, r.snapshots[k], greedy=True, policy_id=f"{r.name}@{k}")
              for r in routers}
        cp.update({"srm": srm_only(), "lrm": lrm_only()})
        curves[k] = evaluate(cfg, engines, learner, cp, sub, seed=cfg.seed + 777)
    log(f"[seed {seed}] evaluation on {len(test)} test problems ({time.time() - t0:.0f} s)")
    result = {"seed": seed, "world": opts.world, "test_ids": [str(p.id) for p in test],
              "routers": [{"name": r.name, "arm": r.arm, "lambda_c": r.lambda_c, "lambda_p": r.lambda_p}
                          for r in routers],
              "final": final, "curves": {str(k): v for k, v in curves.items()}, "train": rows,
              "rubric": _rubric_brief(res), "time_s": time.time() - t0}
    (sdir / "result.json").write_text(json.dumps(result) + "\n")
    return result


def _rubric_brief(res: dict | None) -> dict:
    if res is None:
        return {}
    keys = ("acc", "acc_outcome", "acc_process", "n_outcome", "n_process")
    out = {"rule": {k: res["process_quality"]["test"].get(k) for k in keys}}
    if "no_rubric" in res:
        out["no_rubric"] = {k: res["no_rubric"]["test"].get(k) for k in keys}
    out["rubric"] = {k: res["phases"][-1]["test"].get(k) for k in keys}
    out["gate"] = [(g["phase"], bool(g["accept"]), g["p_value"]) for g in res.get("gate", [])]
    return out


# ------------------------------------------------------------------------------------------- tuning
def tune_lambda_p(base, opts: StudyOptions, out: Path, engines, *, progress: bool = True, log=print
                  ) -> dict[str, float]:
    """λ_p per process arm from ``opts.lambda_p_grid``: the value with the highest mean validation AUC
    (routers trained on the first seed, evaluated on ``opts.validation`` problems of the training
    distribution that are disjoint from the training problems). Written to ``tuning.json``."""
    path = out / "tuning.json"
    if path.exists():
        return json.loads(path.read_text())["lambda_p"]
    seed = opts.seeds[0]
    cfg = seed_config(base, opts, seed, out / "tuning")
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    explore, _, objects, queries = rubric_objects(cfg, engines, Path(cfg.out_dir), log=log,
                                                  judges=any(a in JUDGE_ARMS for a in opts.arms))
    learner = RouterLearner(cfg, get_family(cfg.router.features).dim)
    proc_arms = [a for a in opts.arms if ARMS[a] is not None]
    routers = []
    for lp in opts.lambda_p_grid:
        for r in make_routers(proc_arms, opts, {a: lp for a in proc_arms}, objects, queries, learner):
            routers.append(r)
    train_lockstep(cfg, engines, learner, routers, explore, updates=opts.updates, curve_at=[], progress=progress,
                   desc="tuning λ_p")
    val = T.validation_problems(cfg, opts.validation)
    pols = {"srm": srm_only(), "lrm": lrm_only()}
    pols.update({r.name: RouterPolicy(learner, r.state.params, greedy=True, policy_id=r.name) for r in routers})
    res = evaluate(cfg, engines, learner, pols, val, seed=cfg.seed + 555)
    table, chosen = {}, {}
    for arm in proc_arms:
        for lp in opts.lambda_p_grid:
            names = [r.name for r in routers if r.arm == arm and r.lambda_p == lp]
            m = router_arm_metrics(res, {arm: names}, res["srm"], res["lrm"], opts.budgets)[arm]
            table[f"{arm}_lp{lp:g}"] = m["auc"]
        chosen[arm] = max(opts.lambda_p_grid, key=lambda lp: table[f"{arm}_lp{lp:g}"])
    path.write_text(json.dumps({"lambda_p": chosen, "validation_auc": table, "seed": seed,
                                "validation_problems": len(val)}, indent=1) + "\n")
    log(f"λ_p chosen on validation: {chosen} (AUC {table})")
    return chosen


# ------------------------------------------------------------------------------------------- summary
def summarize(results: Sequence[dict], opts: StudyOptions, lambda_p: dict[str, float]) -> dict[str, Any]:
    """Per arm and seed: AUC, CPT(80%), accuracy at each budget; paired bootstrap intervals (problems
    resampled jointly for every arm and seed) of RoRo − outcome and oracle − outcome, averaged over seeds;
    learning curves (AUC after each snapshot, mean over seeds)."""
    arms = [a for a in opts.arms] + ["threshold"]
    per_seed: dict[str, list[dict]] = {a: [] for a in arms}
    n = len(results[0]["test_ids"])
    rng = np.random.default_rng(12345)
    idx = rng.integers(0, n, size=(opts.n_boot, n))
    boot: dict[str, list[dict[str, np.ndarray]]] = {a: [] for a in arms}
    behaviour: dict[str, list] = {}  # arm -> per seed, per router: [kept_wrong, late_escalation] shares
    for res in results:
        if res["test_ids"] != results[0]["test_ids"]:
            raise ValueError("seeds were evaluated on different test problems; the comparison must be paired")
        fin = res["final"]
        names = _names_by_arm(res, opts)
        s_c, l_c = np.asarray(fin["srm"]["correct"]), np.asarray(fin["lrm"]["correct"])
        for arm in arms:
            c, a = _curve(fin, names[arm])
            m = _metrics(c[None], a[None], s_c.mean(), l_c.mean(), opts.budgets)
            per_seed[arm].append({"seed": res["seed"], **{k: float(v[0]) for k, v in m.items()},
                                  "points": [[float(x), float(y)] for x, y in zip(c, a)]})
            # bootstrap replicates of the same metrics (same resampled problems for every arm and seed)
            C = np.stack([np.asarray(fin[nm]["correct"])[idx].mean(1) for nm in names[arm]], 1)
            Lg = np.stack([np.asarray(fin[nm]["large"])[idx].sum(1) for nm in names[arm]], 1)
            Tt = np.stack([np.asarray(fin[nm]["total"])[idx].sum(1) for nm in names[arm]], 1)
            boot[arm].append(_metrics(Lg / np.maximum(Tt, 1), C, s_c[idx].mean(1), l_c[idx].mean(1), opts.budgets))
            if arm in opts.arms and all("kept_wrong" in fin[nm] for nm in names[arm]):
                behaviour.setdefault(arm, []).append([[float(np.mean(fin[nm]["kept_wrong"])),
                                                       float(np.mean(fin[nm]["late_escalation"]))] for nm in names[arm]])
    keys = ["auc", "cpt_80"] + [f"acc_at_{b:g}" for b in opts.budgets]
    table = {a: {k: _mean_std([r[k] for r in per_seed[a]]) for k in keys} for a in arms}
    diffs = {}
    for arm in ("roro", "oracle", "no_rubric", "threshold"):
        if arm not in per_seed or arm == "outcome" or "outcome" not in per_seed:
            continue
        d = {}
        for k in keys:
            reps = np.nanmean(np.stack([boot[arm][i][k] - boot["outcome"][i][k] for i in range(len(results))]), 0)
            est = float(np.nanmean([r[k] for r in per_seed[arm]]) - np.nanmean([r[k] for r in per_seed["outcome"]]))
            lo, hi = (np.nanpercentile(reps, [2.5, 97.5]) if np.isfinite(reps).any() else (math.nan, math.nan))
            d[k] = {"diff": est, "lo": float(lo), "hi": float(hi)}
        diffs[f"{arm}-outcome"] = d
    curves = {}
    for res in results:
        for k, ev in res["curves"].items():
            names = _names_by_arm(res, opts, suffix=f"@{k}")
            for arm in opts.arms:
                c, a = _curve(ev, names[arm])
                m = _metrics(c[None], a[None], np.mean(ev["srm"]["correct"]), np.mean(ev["lrm"]["correct"]),
                             opts.budgets)
                curves.setdefault(arm, {}).setdefault(int(k), []).append(float(m["auc"][0]))
        names = _names_by_arm(res, opts)
        for arm in opts.arms:  # the final routers on the same curve subset
            sub = {nm: {f: v[:opts.curve_test] for f, v in res["final"][nm].items()} for nm in names[arm]}
            c, a = _curve(sub, names[arm])
            ref = {f: v[:opts.curve_test] for f, v in res["final"]["srm"].items()}
            lref = {f: v[:opts.curve_test] for f, v in res["final"]["lrm"].items()}
            m = _metrics(c[None], a[None], np.mean(ref["correct"]), np.mean(lref["correct"]), opts.budgets)
            curves.setdefault(arm, {}).setdefault(opts.updates, []).append(float(m["auc"][0]))
    learning = {a: {str(k): _mean_std(v) for k, v in sorted(cs.items())} for a, cs in curves.items()}
    first = results[0]
    return {"world": opts.world, "seeds": [r["seed"] for r in results], "arms": arms,
            "options": dataclasses.asdict(opts), "lambda_p": lambda_p, "test_problems": n,
            "endpoints": {"srm": _mean_std([np.mean(r["final"]["srm"]["correct"]) for r in results]),
                          "lrm": _mean_std([np.mean(r["final"]["lrm"]["correct"]) for r in results])},
            "per_seed": per_seed, "table": table, "paired_bootstrap": diffs, "learning_curves": learning,
            "rubric": [r["rubric"] for r in results], "routers": first["routers"],
            "route_behaviour": {a: np.mean(np.asarray(v, float), 0).tolist() for a, v in behaviour.items()
                                if len(v) == len(results)}}


def _names_by_arm(res, opts, suffix: str = "") -> dict[str, list[str]]:
    out = {a: [r["name"] + suffix for r in res["routers"] if r["arm"] == a] for a in opts.arms}
    out["threshold"] = [f"threshold_{th:g}" for th in opts.thresholds]
    return out


def _mean_std(xs) -> dict[str, float]:
    x = np.asarray([v for v in xs if v is not None and np.isfinite(v)], float)
    return {"mean": float(x.mean()) if x.size else math.nan,
            "std": float(x.std(ddof=1)) if x.size > 1 else (0.0 if x.size else math.nan), "n": int(x.size),
            "n_nan": int(len(list(xs)) - x.size)}


def render(summary: dict) -> str:
    """The study table (markdown)."""
    b = summary["options"]["budgets"]
    cols = ["AUC", "CPT(80%)"] + [f"acc @ {x:g} share" for x in b]
    keys = ["auc", "cpt_80"] + [f"acc_at_{x:g}" for x in b]
    lines = [f"**{summary['world']} world**, seeds {summary['seeds']}, {summary['test_problems']} test problems; "
             f"SRM-only {summary['endpoints']['srm']['mean']:.3f}, LRM-only {summary['endpoints']['lrm']['mean']:.3f}; "
             f"λ_p {summary['lambda_p']} (" + ("chosen on validation" if summary['options']['tune'] else "fixed: --no-tune") + ")", "",
             "| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def cell(v):
        if not np.isfinite(v["mean"]):
            return "n.r."
        s = f"{v['mean']:.3f} ± {v['std']:.3f}" if v["n"] > 1 else f"{v['mean']:.3f}"  # ± over seeds
        return s + (f" ({v['n_nan']}/{v['n'] + v['n_nan']} n.r.)" if v["n_nan"] else "")

    for arm in summary["arms"]:
        lines.append(f"| {arm} | " + " | ".join(cell(summary["table"][arm][k]) for k in keys) + " |")
    lcs = summary["options"]["lambda_c"]
    lines += ["", "Operating points per λ_c (test accuracy / large-model token share, mean over seeds):", "",
              "| arm | " + " | ".join(f"λ_c = {lc:g}" for lc in lcs) + " |", "|---|" + "---|" * len(lcs)]
    for arm in summary["arms"]:
        if arm == "threshold":
            continue
        pts = np.asarray([row["points"] for row in summary["per_seed"][arm]], float)  # [seeds, λ_c, 2]
        if pts.ndim != 3 or pts.shape[1] != len(lcs):
            continue
        m = pts.mean(0)
        lines.append(f"| {arm} | " + " | ".join(f"{a:.3f} / {c:.3f}" for c, a in m) + " |")
    res = threshold_residuals(summary)
    if res:
        lines += ["", "Accuracy above the confidence threshold's front at the same large share (router point minus "
                      "the threshold front there, mean over seeds; > 0: better routing than the threshold, not just "
                      "another operating point):", "",
                  "| arm | " + " | ".join(f"λ_c = {lc:g}" for lc in lcs) + " | mean |", "|---|" + "---|" * (len(lcs) + 1)]
        for arm, r in res.items():
            lines.append(f"| {arm} | " + " | ".join(f"{v:+.3f}" for v in r) + f" | {np.mean(r):+.3f} |")
    beh = summary.get("route_behaviour") or {}
    if beh:
        lines += ["", "Routes that keep a wrong small step / that then escalate a later step (share of test problems, "
                      "mean over seeds; the step checker's labels):", "",
                  "| arm | " + " | ".join(f"λ_c = {lc:g}" for lc in lcs) + " |", "|---|" + "---|" * len(lcs)]
        for arm, rows in beh.items():
            lines.append(f"| {arm} | " + " | ".join(f"{k:.3f} / {e:.3f}" for k, e in rows) + " |")
    lines += ["", "Paired bootstrap (test problems resampled jointly for every arm and seed; 95% interval of the "
                  "seed-mean difference):", "", "| difference | " + " | ".join(cols) + " |",
              "|---|" + "---|" * len(cols)]
    for name, d in summary["paired_bootstrap"].items():
        lines.append(f"| {name} | " + " | ".join(f"{d[k]['diff']:+.3f} [{d[k]['lo']:+.3f}, {d[k]['hi']:+.3f}]"
                                                 for k in keys) + " |")
    lines += ["", "Learning curves (test AUC on the first curve_test problems, mean over seeds, after k updates):",
              "", "| arm | " + " | ".join(str(k) for k in summary["learning_curves"][summary["arms"][0]]) + " |",
              "|---|" + "---|" * len(summary["learning_curves"][summary["arms"][0]])]
    for arm, lc in summary["learning_curves"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{v['mean']:.3f}" for v in lc.values()) + " |")
    lines += ["", "Judge held-out pairwise accuracy (outcome / process pairs), per seed:", ""]
    for s, r in zip(summary["seeds"], summary["rubric"]):
        if not r:
            lines.append(f"- seed {s}: no Judge trained (no arm reads one)")
            continue
        parts = [f"{k} {_f2(r[k].get('acc_outcome'))}/{_f2(r[k].get('acc_process'))}"
                 for k in ("rule", "no_rubric", "rubric") if k in r]
        lines.append(f"- seed {s}: " + ", ".join(parts) + f"; gate {r['gate']}")
    return "\n".join(lines) + "\n"


def threshold_residuals(summary: dict) -> dict[str, list[float]]:
    """Per trained arm, per λ_c (mean over seeds): the router's test accuracy minus the confidence-threshold
    front's accuracy at the router's large share (the front of that seed's threshold points and the SRM-only
    point, interpolated as in :func:`acc_at_budget`). Two arms at different operating points on the same
    front get the same residual, so this separates better routing from a shifted operating point."""
    per_seed, srm = summary["per_seed"], summary["endpoints"]["srm"]["mean"]
    if "threshold" not in per_seed:
        return {}
    out = {}
    for arm in summary["arms"]:
        if arm == "threshold":
            continue
        rows = []
        for row, th in zip(per_seed[arm], per_seed["threshold"]):
            tc = np.asarray([[c for c, _ in th["points"]]])
            ta = np.asarray([[a for _, a in th["points"]]])
            rows.append([a - acc_at_budget(tc, ta, srm, c)[0] for c, a in row["points"]])
        if rows and all(len(r) == len(rows[0]) for r in rows):
            out[arm] = [float(v) for v in np.mean(rows, 0)]
    return out


def _f2(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"outcome": "tab:blue", "roro": "tab:red", "no_rubric": "tab:orange", "oracle": "tab:green",
              "threshold": "tab:gray"}
    for arm in summary["arms"]:
        pts = np.array([r["points"] for r in summary["per_seed"][arm]])  # [seeds, K, 2]
        m = pts.mean(0)
        o = np.argsort(m[:, 0])
        ax1.plot(m[o, 0], m[o, 1], "o-", color=colors.get(arm), label=arm, ms=4)
        for p in pts:
            ax1.plot(p[:, 0], p[:, 1], ".", color=colors.get(arm), alpha=0.25, ms=3)
    e = summary["endpoints"]
    ax1.plot([0, 1], [e["srm"]["mean"], e["lrm"]["mean"]], "k--", lw=0.8, label="SRM→LRM line")
    ax1.set_xlabel("large-model token share")
    ax1.set_ylabel("accuracy (test)")
    ax1.set_title(f"{summary['world']} world: accuracy vs cost (mean over seeds)")
    ax1.legend(fontsize=8)
    for arm, lc in summary["learning_curves"].items():
        ks = [int(k) for k in lc]
        ax2.errorbar(ks, [v["mean"] for v in lc.values()], yerr=[v["std"] for v in lc.values()], marker="o",
                     color=colors.get(arm), label=arm, capsize=2)
    ax2.set_xscale("log")
    ax2.set_xlabel("router updates")
    ax2.set_ylabel("test AUC (curve subset)")
    ax2.set_title("learning curves")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------- main
def run_study(opts: StudyOptions, *, config=None, overrides: Sequence[str] = (), progress: bool = True,
              log=print) -> dict[str, Any]:
    from roro_jax.worlds.variants import WORLDS

    if opts.world not in WORLDS:
        raise ValueError(f"--world {opts.world!r} is not a toy world; known: {sorted(WORLDS)}")
    bad = [a for a in opts.arms if a not in ARMS]
    if bad or "outcome" not in opts.arms:
        raise ValueError(f"--arms must include 'outcome' and come from {sorted(ARMS)}; got {opts.arms}")
    out = Path(opts.out or f"runs/study/{opts.world}")
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(config or CONFIG, list(overrides))
    engines = T.make_engines(seed_config(base, opts, opts.seeds[0], out))
    proc_arms = [a for a in opts.arms if ARMS[a] is not None]
    if opts.tune and proc_arms:
        lambda_p = tune_lambda_p(base, opts, out, engines, progress=progress, log=log)
    else:
        lambda_p = {a: opts.lambda_p for a in proc_arms}
    results = []
    for s in opts.seeds:
        path = out / f"seed{s}" / "result.json"
        if path.exists():
            log(f"[seed {s}] done before: {path}")
            results.append(json.loads(path.read_text()))
            continue
        results.append(run_seed(base, opts, s, out, engines, lambda_p, progress=progress, log=log))
    summary = summarize(results, opts, lambda_p)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    table = render(summary)
    (out / "summary.md").write_text(table)
    plot(summary, out / "study.png")
    log(table)
    log(f"summary: {out / 'summary.json'}  table: {out / 'summary.md'}  plot: {out / 'study.png'}")
    return summary


def parse_args(argv=None) -> tuple[StudyOptions, list[str], str | None]:
    d = StudyOptions()
    ap = argparse.ArgumentParser(prog="python -m pipelines.study", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--world", default=d.world, help="toy world (roro_jax.worlds.variants): control | lucky | sparse")
    ap.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    ap.add_argument("--arms", nargs="+", default=d.arms, help=f"arms among {list(ARMS)} (outcome required)")
    ap.add_argument("--lambda-c", type=float, nargs="+", default=d.lambda_c, help="cost weights λ_c (the sweep)")
    ap.add_argument("--lambda-p", type=float, default=d.lambda_p, help="process weight when --no-tune")
    ap.add_argument("--lambda-p-grid", type=float, nargs="+", default=d.lambda_p_grid,
                    help="λ_p values tried on the validation split (first seed)")
    ap.add_argument("--no-tune", action="store_true", help="use --lambda-p for every process arm")
    ap.add_argument("--updates", type=int, default=d.updates, help="GRPO updates per router")
    ap.add_argument("--curve-at", type=int, nargs="*", default=d.curve_at,
                    help="also evaluate the routers after these many updates (learning curves)")
    ap.add_argument("--explore", type=int, default=d.explore, help="training problems (explored, then trained on)")
    ap.add_argument("--queries-per-update", type=int, default=d.queries_per_update)
    ap.add_argument("--group-size", type=int, default=d.group_size)
    ap.add_argument("--test", type=int, default=d.test, help="held-out test problems, evaluated once per seed")
    ap.add_argument("--curve-test", type=int, default=d.curve_test, help="test problems for the learning curves")
    ap.add_argument("--validation", type=int, default=d.validation, help="validation problems for tuning λ_p")
    ap.add_argument("--thresholds", type=float, nargs="+", default=d.thresholds,
                    help="confidence-threshold baseline sweep")
    ap.add_argument("--budgets", type=float, nargs="+", default=d.budgets,
                    help="large-share budgets for accuracy at matched cost")
    ap.add_argument("--n-boot", type=int, default=d.n_boot)
    ap.add_argument("--out", default="", help="output folder (default runs/study/<world>)")
    ap.add_argument("-c", "--config", default=None, help=f"project config (default {CONFIG.name})")
    ap.add_argument("--quick", action="store_true", help="every stage on a few problems and updates (smoke run)")
    ap.add_argument("overrides", nargs="*", help="project config overrides key=value")
    a = ap.parse_args(argv)
    opts = StudyOptions(world=a.world, seeds=a.seeds, arms=a.arms, lambda_c=a.lambda_c, lambda_p=a.lambda_p,
                        lambda_p_grid=a.lambda_p_grid, tune=not a.no_tune, updates=a.updates, curve_at=a.curve_at,
                        explore=a.explore, queries_per_update=a.queries_per_update, group_size=a.group_size,
                        test=a.test, curve_test=a.curve_test, validation=a.validation, thresholds=a.thresholds,
                        budgets=a.budgets, n_boot=a.n_boot, out=a.out)
    overrides = list(a.overrides)
    if a.quick:
        opts = dataclasses.replace(quick_options(opts), seeds=a.seeds, arms=a.arms, out=a.out)
        overrides = QUICK_CONFIG + overrides
    return opts, overrides, a.config


def main(argv=None) -> dict:
    opts, overrides, config = parse_args(argv)
    return run_study(opts, config=config, overrides=overrides)


if __name__ == "__main__":
    main(sys.argv[1:])
