"""The ``roro rubric`` stage: Judge and Rubricor trained alternately, gated, compared with baselines.

``run_rubric_stage(cfg, trajectories, pairs, queries=None) -> results`` takes any world's trajectories and
preference pairs (``cfg`` is a :class:`~roro_jax.rubric.RubricConfig`, or a project config with a
``rubric`` field) and reports, on held-out queries, the pairwise accuracy of

(a) the rule-based process score (:func:`roro_jax.pairs.process_quality`),
(b) the no-rubric Judge (same backbone and number of Judge steps),
(c) the rubric Judge after each phase of each alternating round, with the gate's decisions.

``replay_pairs(...)`` / ``toy_pairs(...)`` build the replay / toy world's exploratory trajectories and pairs;
``python -m pipelines.rubric --world replay --seeds 0 1 2 --json out.json`` runs the experiment and
prints the results table (markdown).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Callable, Sequence

import numpy as np

from roro_jax.jsonio import atomic_write_json
from roro_jax.pairs import PairsConfig, build_pairs
from roro_jax.rubric.loop import (RubricConfig, accuracy_report, make_data, process_quality_correct, run_alternating,
                                  run_no_rubric)
from roro_jax.types import PreferencePair, Trajectory


def replay_pairs(episodes=None, *, pairs_cfg: PairsConfig | None = None, seed: int = 0
                 ) -> tuple[list[Trajectory], list[PreferencePair], dict[str, str]]:
    """Replay-world trajectories of the exploration suite (one route per policy and episode), their pairs
    (default: at most 6 pairs per kind per query) and the query texts."""
    from roro_jax.router.baselines import replay_policy
    from roro_jax.router.exploration import ExplorationConfig, exploration_suite
    from roro_jax.worlds.replay import ReplayWorld

    world = ReplayWorld(episodes)
    trajs: list[Trajectory] = []
    for pol in exploration_suite(ExplorationConfig(seed=seed)):
        actions, _, _ = world.rollout(replay_policy(pol, seed=seed))
        trajs += world.trajectories(actions, policy_id=pol.policy_id, seed=seed)
    queries = {e.id: e.query for e in world.episodes}
    return trajs, build_pairs(trajs, pairs_cfg or PairsConfig(max_per_kind=6), seed=seed, queries=queries), queries


def toy_pairs(n_problems: int = 64, *, pairs_cfg: PairsConfig | None = None, seed: int = 0, config=None
              ) -> tuple[list[Trajectory], list[PreferencePair], dict[str, str]]:
    """Toy-world trajectories of the exploration suite (the shipped tiny SRM/LRM through the stepwise
    rollout with the Flax engines), their pairs and the query texts: ``n_problems`` training problems,
    routed as ``roro demo`` routes them (``config``: a project config; default ``configs/demo.yaml``).
    Then ``run_rubric_stage(cfg, *toy_pairs())`` gives the toy-world results."""
    import dataclasses

    from pipelines import toy as T
    from roro_jax.config import load_config
    from roro_jax.paths import REPO_ROOT
    from roro_jax.router.exploration import exploration_suite

    cfg = config or load_config(REPO_ROOT / "configs" / "demo.yaml")
    problems = T.train_problems(cfg)[:n_problems]
    suite = exploration_suite(dataclasses.replace(cfg.exploration, seed=seed))
    routed = T.route_many(cfg, T.make_engines(cfg), problems, suite, seed=seed, desc="exploration")
    trajs = [t for pol in suite for t in routed[pol.policy_id]]
    queries = {str(p.id): p.question for p in problems}
    return trajs, build_pairs(trajs, pairs_cfg or PairsConfig(max_per_kind=6), seed=seed, queries=queries), queries


def _rubric_cfg(cfg) -> RubricConfig:
    return cfg if isinstance(cfg, RubricConfig) else cfg.rubric


def run_rubric_stage(cfg, trajectories: Sequence[Trajectory], pairs: Sequence[PreferencePair],
                     queries: dict[str, str] | None = None, *, log=print) -> dict[str, Any]:
    """One seed of the rubric stage on any pairs + trajectories (see the module docstring).

    Returns a JSON-able dict: ``split`` sizes, ``process_quality`` (a), ``no_rubric`` (b), ``phases`` (c,
    one record per phase with the gate decision), ``gate`` decisions; plus live objects under ``objects``
    (the trained Judge, Rubricor and rubric book, for the router stage).
    """
    rc = _rubric_cfg(cfg)
    data = make_data(trajectories, pairs, queries, rc)
    res: dict[str, Any] = {"seed": rc.seed, "split": {s: {"pairs": len(data.pairs_of(s)),
                                                          "queries": len(data.split_queries(s))}
                                                      for s in ("train", "val", "test")}}
    res["process_quality"] = {s: accuracy_report(process_quality_correct(data.pairs_of(s), data.by_id),
                                                 data.pairs_of(s)) for s in ("val", "test")}
    objects = {}
    if rc.no_rubric_baseline:
        nr = run_no_rubric(rc, data, log=log)
        objects["no_rubric_judge"] = nr.pop("judge")
        res["no_rubric"] = nr
    alt = run_alternating(rc, data, log=log)
    for k in ("judge", "rubricor", "book"):
        objects[k] = alt.pop(k)
    res.update(alt)
    res["objects"] = objects
    return res


def rubric_stage_from_files(cfg, trajectories_path, pairs_path, queries_path=None) -> dict[str, Any]:
    """``roro rubric``: the stage on stored trajectories and pairs; writes ``<out_dir>/rubric/results.json``
    (gate log and checkpoints beside it). ``cfg`` is the project config (its ``rubric`` and ``seed``)."""
    import dataclasses
    from pathlib import Path

    from roro_jax.jsonio import read_queries
    from roro_jax.pairs import read_pairs
    from roro_jax.store import read_trajectory_file
    from roro_jax.types import InputError

    for path in (trajectories_path, pairs_path, queries_path):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"roro rubric: input file {path} does not exist")
    queries = read_queries(queries_path) if queries_path else None
    trajs = read_trajectory_file(trajectories_path)  # unique keys, non-empty
    pairs = read_pairs(pairs_path)
    if not trajs or not pairs:
        raise InputError(f"roro rubric: {len(trajs)} trajectories in {trajectories_path}, {len(pairs)} pairs in "
                         f"{pairs_path}; both must be non-empty")
    out = Path(cfg.out_dir) / "rubric"
    rc = dataclasses.replace(cfg.rubric, seed=cfg.seed, out_dir=str(out))
    res = jsonable(run_rubric_stage(rc, trajs, pairs, queries))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    atomic_write_json(path, res, indent=1, default=str)
    print(results_table([res], "given"))
    return {**res, "path": path}


def judge_process_fn(judge, book, queries: dict[str, str]) -> Callable[[Sequence[Trajectory]], np.ndarray]:
    """RoRo's process reward: the Judge's score of each trajectory under its query's current rubric."""

    def process(trajs: Sequence[Trajectory]) -> np.ndarray:
        missing = sorted({t.query_id for t in trajs} - set(book.rubrics))
        if missing:
            raise KeyError(f"no rubric for queries {missing[:3]} (router problems must be explored ones)")
        return np.asarray(judge.scores([(queries[t.query_id], book.rubrics[t.query_id], t) for t in trajs]),
                          np.float32)

    return process


def _rule_process_fn(objects, queries):
    from roro_jax.pairs import process_quality

    return lambda trajs: np.array([process_quality(t) for t in trajs], np.float32)


def _no_rubric_process_fn(objects, queries):
    if "no_rubric_judge" not in objects:
        raise ValueError("process_scorer=no_rubric_judge needs rubric.no_rubric_baseline=true")
    judge = objects["no_rubric_judge"]
    return lambda trajs: np.asarray(judge.scores([(queries[t.query_id], None, t) for t in trajs]), np.float32)


def _oracle_process_fn(objects, queries):
    from roro_jax.rubric.teacher import checkpoint_scores

    return lambda trajs: np.asarray(checkpoint_scores(trajs, queries), np.float32)


# reward.process_scorer -> (rubric-stage objects, query texts) -> process scorer; add your own here
PROCESS_SCORERS: dict[str, Callable[..., Callable[[Sequence[Trajectory]], np.ndarray]]] = {
    "judge": lambda objects, queries: judge_process_fn(objects["judge"], objects["book"], queries),
    "no_rubric_judge": _no_rubric_process_fn,
    "rule": _rule_process_fn,
    "oracle": _oracle_process_fn,
}


def process_scorer(name: str, objects: dict, queries: dict[str, str]) -> Callable[[Sequence[Trajectory]], np.ndarray]:
    """RoRo's process reward by name (``reward.process_scorer``): ``judge`` (the rubric Judge under the
    Rubricor's rubric; RoRo), ``no_rubric_judge`` (ablation), ``rule`` (the rule-based process score of
    :func:`roro_jax.pairs.process_quality`; ablation), ``oracle`` (toy worlds: the share of the problem's
    reference steps the route's kept steps match, read by the checker,
    :func:`roro_jax.rubric.teacher.checkpoint_scores`; the upper bound a perfect step verifier gives)."""
    if name not in PROCESS_SCORERS:
        raise KeyError(f"unknown process scorer {name!r}; known: {sorted(PROCESS_SCORERS)}")
    return PROCESS_SCORERS[name](objects, queries)


# ------------------------------------------------------------------------------------------ reporting

def _ms(xs) -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.3f}"


def results_table(runs: Sequence[dict[str, Any]], world: str) -> str:
    """Markdown table over seeds: mean ± sample std of held-out (test-query) pairwise accuracy."""
    kinds = sorted({k[4:] for r in runs for k in r["process_quality"]["test"] if k.startswith("acc_")} - {"macro"})
    kinds.append("macro")
    head = "| scorer | " + " | ".join(["all"] + kinds) + " | gate decisions (per seed) |"
    lines = [f"**{world} world**, {len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}); test split: "
             f"{runs[0]['split']['test']['pairs']} pairs over {runs[0]['split']['test']['queries']} held-out queries "
             f"(kinds: " + ", ".join(f"{k} {runs[0]['process_quality']['test'].get('n_' + k, 0)}" for k in kinds
                                     if k != "macro") + "; macro = mean of the kinds' accuracies)",
             "", head, "|" + "---|" * (len(kinds) + 3)]

    def row(name, recs, gates=""):
        cells = [_ms([r["acc"] for r in recs])] + [_ms([r.get("acc_" + k) for r in recs]) for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gates} |")

    row("(a) rule-based process score", [r["process_quality"]["test"] for r in runs])
    if all("no_rubric" in r for r in runs):
        row(f"(b) no-rubric Judge ({runs[0]['no_rubric']['steps']} steps)", [r["no_rubric"]["test"] for r in runs])
    phases = [(p["phase"], p["round"]) for p in runs[0]["phases"] if p["phase"] != "init"]
    for ph, rnd in phases:
        recs, dec = [], []
        for r in runs:
            p = next(p for p in r["phases"] if p["phase"] == ph and p["round"] == rnd)
            recs.append(p["test"])
            g = p.get("gate")
            if g:
                dec.append(("A" if g["accept"] else "R") + f" p={g['p_value']:.2g}")
        row(f"(c) rubric Judge, round {rnd} after {ph} phase", recs, "; ".join(dec))
    lines.append("")
    lines.append("A = gate accepted the phase, R = rejected and rolled back (one-sided exact McNemar on the "
                 "validation queries' pairs); each (c) row is the state in place after that phase's gate.")
    return "\n".join(lines)


def jsonable(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k != "objects"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="replay", choices=["replay", "toy"])
    ap.add_argument("--toy-problems", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", default=None, help="write all runs as JSON here")
    ap.add_argument("--out-dir", default=None, help="gate logs + checkpoints under <out-dir>/seed<k>")
    ap.add_argument("--set", nargs="*", default=[], help="overrides key=value of RubricConfig (dotted)")
    ap.add_argument("--from-json", nargs="*", default=None,
                    help="only print the table of the runs stored in these JSON files (from --json)")
    args = ap.parse_args(argv)
    from omegaconf import OmegaConf

    if args.from_json:
        runs = [r for path in args.from_json for r in json.load(open(path))["runs"]]
        table = results_table(runs, args.world)
        print(table)
        return {"world": args.world, "runs": runs, "table": table}

    base = OmegaConf.structured(RubricConfig)
    if args.set:
        base = OmegaConf.merge(base, OmegaConf.from_dotlist(args.set))
    trajs, pairs, queries = replay_pairs() if args.world == "replay" else toy_pairs(args.toy_problems)
    runs = []
    for s in args.seeds:
        rc = OmegaConf.to_object(base)
        rc.seed = s
        if args.out_dir:
            rc.out_dir = f"{args.out_dir}/seed{s}"
        res = jsonable(run_rubric_stage(rc, trajs, pairs, queries))
        runs.append(res)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"world": args.world, "config": OmegaConf.to_container(base), "runs": runs}, f, indent=1,
                          default=str)
    table = results_table(runs, args.world)
    print(table)
    return {"world": args.world, "runs": runs, "table": table}


if __name__ == "__main__":
    main(sys.argv[1:])
