"""The replay world end to end: router GRPO on recorded episodes, baselines, evaluation, report.

Train on a seeded ``replay.train_frac`` share of the MATH-500 episodes, test on the rest and on the extra
held-out sets (AIME 2025 by default). The router reads the ``prm`` feature family (TRIM-Agg). Every
accuracy here is an ESTIMATE (mixed routes were never run; see ``roro_jax.worlds.replay``), and the
report says so.

Routers are trained over the ``sweep.lambda_c`` sweep with ``reward = 1[correct] - λ_c * large_share``
(outcome-only GRPO, TRIM-style) and, when ``reward.weights.process > 0``, also as RoRo: the rubric stage
(Judge + Rubricor on the exploration suite's pairs of the *training* episodes) runs first, and
``reward = 1[correct] + λ_p * Judge(query, rubric, trajectory) - λ_c * large_share``.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from roro_jax.config import ConfigError
from roro_jax.eval.records import CurvePoint
from roro_jax.eval.report import write_report
from roro_jax.jsonio import atomic_write_json
from roro_jax.rl.trainer import RouterLearner, run_training, score_trajectories
from roro_jax.worlds.replay import EpisodeWarning, ReplayWorld

# parameter counts for FLOPs (Qwen3-1.7B / Qwen3-14B, non-embedding counts are close to these)
SMALL_PARAMS, LARGE_PARAMS = 1.7e9, 14.8e9


def split_indices(n: int, train_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(train_frac * n))
    return np.sort(perm[:k]), np.sort(perm[k:])


def make_world(cfg, episodes=None, *, key: str = "replay.episodes") -> ReplayWorld:
    """The world of ``episodes`` (default ``cfg.replay.episodes``). A missing file or an unknown outcome rule is
    a :class:`~roro_jax.config.ConfigError` naming the config key; a malformed file an ``EpisodeFormatError``
    naming ``file:line``."""
    source = episodes if episodes is not None else cfg.replay.episodes
    try:
        return ReplayWorld(source, outcome_rule=cfg.replay.outcome_rule)
    except FileNotFoundError as e:
        raise ConfigError(f"config key '{key}': {e}") from None
    except KeyError as e:  # an outcome rule that is not registered
        raise ConfigError(f"config key 'replay.outcome_rule': {e.args[0]}") from None


def report_name(entry: str) -> str:
    """The report name of a ``replay.extra_test`` entry: its file name without ``.jsonl``."""
    return Path(str(entry)).stem


def load_test_sets(cfg, world: ReplayWorld, train_idx: np.ndarray, test_idx: np.ndarray
                   ) -> dict[str, tuple[ReplayWorld, np.ndarray]]:
    """Every test set, loaded and checked before anything trains: the held-out MATH-500 split and each
    ``replay.extra_test`` entry. Two entries with one report name are an error (their reports would
    overwrite each other); an extra set that shares problem ids or query texts with the training split is
    loaded with an :class:`~roro_jax.worlds.replay.EpisodeWarning` (its results are not held out)."""
    sets = {"math500_heldout": (world, test_idx)}
    entries: dict[str, str] = {}
    train_ids = {world.ids[i] for i in train_idx}
    train_queries = {world.episodes[i].query for i in train_idx}
    for i, entry in enumerate(cfg.replay.extra_test):
        key = f"replay.extra_test[{i}]"
        name = report_name(entry)
        if name in sets:
            first = f"replay.extra_test entry {entries[name]!r}" if name in entries else "the held-out split"
            raise ConfigError(f"config key '{key}': {str(entry)!r} would be reported as {name!r}, like {first}; "
                              "each test set needs its own file name")
        w = make_world(cfg, entry, key=key)
        shared = [e.id for e in w.episodes if e.id in train_ids or e.query in train_queries]
        if shared:
            warnings.warn(f"{key} ({str(entry)!r}): {len(shared)} of {len(w)} episodes share a problem id or query "
                          f"with the training split (e.g. {shared[0]!r}); their results are not held out",
                          EpisodeWarning, stacklevel=2)
        sets[name], entries[name] = (w, np.arange(len(w))), str(entry)
    return sets


def sample_actions(learner: RouterLearner, params, world: ReplayWorld, idx: np.ndarray, rng: np.random.Generator,
                   greedy: bool = False):
    """Roll the router over episodes ``idx`` [N]; returns ``(actions, features, route, logp [N, T])``."""
    logp = np.zeros((len(idx), world.max_steps), np.float32)

    def policy(f_t, t):
        p = np.asarray(learner.escalate_prob(np.asarray(f_t, np.float32), params), np.float64)
        a = (p > 0.5) if greedy else (rng.random(p.shape) < p)
        p = np.clip(p, 1e-7, 1 - 1e-7)
        logp[:, t] = np.where(a, np.log(p), np.log1p(-p))
        return a.astype(np.int8)

    actions, feats, route = world.rollout(policy, idx)
    return actions, feats, route, logp


def make_collect(learner: RouterLearner, world: ReplayWorld, train_idx: np.ndarray, cfg, process_fn=None):
    """``process_fn(trajectories) -> [N]`` scores the routes (RoRo); needed when ``reward.weights.process > 0``."""
    G, Q = cfg.grpo.group_size, min(cfg.replay.queries_per_update, len(train_idx))
    use_process = bool(dict(cfg.reward.weights).get("process", 0.0))
    if use_process and process_fn is None:
        raise ValueError("reward.weights.process > 0 needs a process scorer (the Judge of the rubric stage)")

    def collect(params, key, k):
        rng = np.random.default_rng((cfg.seed, k))
        q = rng.choice(train_idx, size=Q, replace=False)
        idx = np.repeat(q, G)  # group-major
        actions, feats, route, logp = sample_actions(learner, params, world, idx, rng)
        mask = route.decision_mask.astype(np.float32)
        correct = route.correct.astype(np.float32)
        rb = route.reward_batch()
        if use_process:
            rb["process"] = np.asarray(process_fn(world.trajectories(actions, idx, policy_id="router")), np.float32)
        rewards, terms, adv = score_trajectories(rb, cfg)
        batch = {"features": feats, "actions": actions.astype(np.int32), "old_logp": logp * mask, "mask": mask,
                 "advantages": np.asarray(adv)}
        info = {"reward": float(np.mean(rewards)), "accuracy": float(correct.mean()),
                "large_share": float(route.large_share.mean()),
                "escalation_rate": float((route.escalated & route.decision_mask).sum() / max(mask.sum(), 1)),
                **{f"reward/{n}": float(np.mean(v)) for n, v in terms.items()}}
        return batch, info

    return collect


def train_router_replay(cfg, world: ReplayWorld | None = None, *, resume=True, stop_after=None, progress=True,
                        process_fn=None):
    world = world or make_world(cfg)
    train_idx, _ = split_indices(len(world), cfg.replay.train_frac, cfg.replay.split_seed)
    learner = RouterLearner(cfg, world.feature_family.dim)
    hist = run_training(learner, make_collect(learner, world, train_idx, cfg, process_fn), cfg, resume=resume,
                        stop_after=stop_after, progress=progress, desc="router GRPO (replay)")
    return learner, hist


def rubric_process_fn(cfg, world: ReplayWorld, train_idx: np.ndarray, out: Path):
    """The rubric stage on the training episodes (exploration suite → pairs → Judge/Rubricor with the gate;
    results in ``out/results.json``) and RoRo's process scorer: the final Judge under each query's rubric."""
    from pipelines.rubric import jsonable, process_scorer, replay_pairs, run_rubric_stage

    train_eps = [world.episodes[i] for i in train_idx]
    trajs, pairs, queries = replay_pairs(train_eps, pairs_cfg=cfg.pairs, seed=cfg.seed)
    rc = dataclasses.replace(cfg.rubric, seed=cfg.seed, out_dir=str(out))
    res = run_rubric_stage(rc, trajs, pairs, queries)
    objects = res.pop("objects")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", jsonable(res), indent=1, default=str)
    return process_scorer(cfg.reward.process_scorer, objects, queries)


def _point(world: ReplayWorld, idx, actions, method, *, role="method", param=None, param_name="") -> CurvePoint:
    r = world.route(actions, idx)
    flops = 2.0 * (SMALL_PARAMS * r.small_tokens + LARGE_PARAMS * r.large_tokens)
    return CurvePoint.from_arrays(
        method, r.correct.astype(float), r.large_tokens, r.kept_tokens, problem_ids=[world.ids[i] for i in idx],
        role=role, param=param, param_name=param_name, flops=float(flops.mean()), is_estimate=True,
        estimate_note=f"mixed-route outcomes estimated by the '{world.outcome_rule}' rule")


def fit_steer(world: ReplayWorld, train_idx: np.ndarray):
    """STEER's two-component mixture over the small model's step confidences (PRM scores) of the
    training episodes."""
    from roro_jax.router.baselines import fit_gmm2

    scores = np.concatenate([world.small_prm[i, :world.n_small[i]] for i in train_idx])
    return fit_gmm2(scores)


def baseline_points(world: ReplayWorld, idx: np.ndarray, cfg, gmm=None) -> list[CurvePoint]:
    T = world.max_steps
    n = len(idx)
    pts = [_point(world, idx, np.zeros((n, T), np.int8), "SRM-only", role="srm"),
           _point(world, idx, np.ones((n, T), np.int8), "LRM-only", role="lrm")]
    rng = np.random.default_rng(cfg.seed)
    for p in cfg.sweep.random_rates:
        pts.append(_point(world, idx, (rng.random((n, T)) < p).astype(np.int8), "random", param=p,
                          param_name="rate"))
    thr = world.threshold_actions(cfg.sweep.thresholds)[:, idx]
    for th, a in zip(cfg.sweep.thresholds, thr):
        pts.append(_point(world, idx, a, "TRIM-Thr", param=th, param_name="prm_threshold"))
    if gmm is not None:
        from roro_jax.router.baselines import SteerPolicy, replay_policy

        for gamma in cfg.sweep.gammas:
            actions, _, _ = world.rollout(replay_policy(SteerPolicy(gmm, gamma), seed=cfg.seed), idx)
            pts.append(_point(world, idx, actions, "STEER", param=gamma, param_name="gamma"))
    return pts


def run_replay(cfg, *, progress: bool = True) -> dict:
    """Train the λ_c sweep of routers and evaluate every method on the held-out sets; write reports."""
    out = Path(cfg.out_dir)
    world = make_world(cfg)
    train_idx, test_idx = split_indices(len(world), cfg.replay.train_frac, cfg.replay.split_seed)
    test_sets = load_test_sets(cfg, world, train_idx, test_idx)  # every input checked before training
    gmm = fit_steer(world, train_idx)
    lam_p = float(dict(cfg.reward.weights).get("process", 0.0))
    process_fn = rubric_process_fn(cfg, world, train_idx, out / "rubric") if lam_p else None
    learners = {}
    for lam in cfg.sweep.lambda_c:
        for method, wp in [("GRPO outcome-only", 0.0)] + ([("RoRo", lam_p)] if lam_p else []):
            tag = "router" if method.startswith("GRPO") else "roro"
            run_cfg = dataclasses.replace(
                cfg, out_dir=str(out / f"{tag}_lc{lam}"),
                reward=dataclasses.replace(cfg.reward, weights={**cfg.reward.weights, "cost": lam, "process": wp}))
            learners[(method, lam)], _ = train_router_replay(run_cfg, world, progress=progress,
                                                             process_fn=process_fn if wp else None)
    results = {}
    for name, (w, idx) in test_sets.items():
        pts = baseline_points(w, idx, cfg, gmm)
        rng = np.random.default_rng(cfg.seed)
        for (method, lam), learner in learners.items():
            actions, _, _, _ = sample_actions(learner, learner.params, w, idx, rng, greedy=True)
            pts.append(_point(w, idx, actions, method, param=lam, param_name="lambda_c"))
        ecfg = dataclasses.replace(cfg.eval, title=f"Replay world ({name}): accuracy vs large-model token share")
        results[name] = write_report(pts, out / "report" / name, ecfg)
    return results
