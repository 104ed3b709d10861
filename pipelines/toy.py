"""The toy world's inputs (engines, problems) and the stage functions of the toy and live worlds:
routing many policies, exploratory collection, router GRPO through the rollout, evaluation.

Everything runs for real on a CPU: the shipped toy models (``roro_jax/assets/toy``) generate every step
through the Flax engine, the rollout routes them, the grader checks the answers. The live world
(:mod:`pipelines.live`) passes its own engines (any ``StepEngine``) and problems to the same functions;
:mod:`pipelines.roro` composes them. Which world's inputs a config means is the world registry's business
(:mod:`roro_jax.worlds.base`): this module never imports another world's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from roro_jax.engines.flax_engine import FlaxEngine
from roro_jax.jsonio import atomic_write_json
from roro_jax.rl.trainer import RouterLearner, run_training, score_trajectories
from roro_jax.rollout import default_prompt, rollout, rollout_sync
from roro_jax.router.features import get_family
from roro_jax.router.policies import Policy, RouterPolicy
from roro_jax.store import TrajectoryStore
from roro_jax.tasks import toy
from roro_jax.types import Trajectory, pad_trajectories
from roro_jax.worlds.base import get_world
from roro_jax.worlds.variants import get_world as get_variant

ProcessFn = Callable[[Sequence[Trajectory]], np.ndarray]  # trajectories -> process score in [0, 1] each


@dataclasses.dataclass
class ToyEngines:
    """The SRM and LRM engines (Flax in the toy world; any ``StepEngine`` in the live world)."""

    small: FlaxEngine
    large: FlaxEngine


def make_engines(cfg) -> ToyEngines:
    """The toy world's SRM/LRM (``toy.variant``, :mod:`roro_jax.worlds.variants`; ``control`` = the shipped
    pair) as Flax engines with one batch shape and one prompt bucket each, so a whole run compiles only a
    handful of sampler variants (compiling dominates the toy world's CPU time)."""
    world = get_variant(cfg.toy.variant)
    kw = dict(max_batch=cfg.toy.max_batch, batch_buckets=(cfg.toy.max_batch,),
              min_prompt_bucket=cfg.toy.prompt_bucket, min_new_bucket=cfg.rollout.max_step_tokens)
    return ToyEngines(FlaxEngine(world.model_dir("small"), name="toy-small", **kw),
                      FlaxEngine(world.model_dir("large"), name="toy-large", **kw))


def train_problems(cfg) -> list:
    """The training pool: ``toy.train_problems`` problems of the world's training distribution."""
    return get_variant(cfg.toy.variant).problems("train", cfg.toy.train_problems, seed=cfg.toy.problem_seed)


def validation_problems(cfg, n: int) -> list:
    """``n`` training-distribution problems disjoint from the training pool (for choosing hyperparameters)."""
    return get_variant(cfg.toy.variant).problems("validation", n, seed=cfg.toy.problem_seed,
                                               skip=cfg.toy.train_problems)


def test_problems(cfg) -> list:
    """``toy.test_problems`` held-out problems of the world's test distribution (test split)."""
    return get_variant(cfg.toy.variant).problems("test", cfg.toy.test_problems, seed=cfg.toy.problem_seed)


def settings(cfg):
    """The world's problem counts (``explore_problems``, ``test_problems``, ``queries_per_update``): its
    config section (``cfg.toy``, ``cfg.live``; :class:`roro_jax.worlds.base.World`)."""
    return get_world(cfg.world).settings(cfg)


def prompt_format(cfg):
    """The toy world's prompt: :func:`roro_jax.tasks.toy.prompt_text` (the question and a blank line)."""
    return toy.prompt_text


def prompt_fn(cfg):
    """Problem -> prompt text: the world's format (the live world's ``live.prompt_template``); else the
    rollout's default."""
    fmt = get_world(cfg.world).prompt_fn
    return default_prompt if fmt is None else fmt(cfg)


def annotate_fn(cfg):
    """``(problem, steps) -> meta`` of the world's routed trajectories (the toy world's step labels), or None."""
    return get_world(cfg.world).annotate


_FUSED: dict = {}


def fused_router(cfg, engines: ToyEngines):
    """The fused routed sampler for ``engines`` when ``toy.routing`` is ``fused`` (toy world, Flax engines,
    ``logprob`` features), else None (the host loop). One per engine pair and rollout settings."""
    from roro_jax.engines.fused_routing import FusedRouter

    if (cfg.world != "toy" or getattr(cfg.toy, "routing", "host") != "fused" or cfg.router.features != "logprob"
            or not all(isinstance(e, FlaxEngine) for e in (engines.small, engines.large))):
        return None
    key = (id(engines.small), id(engines.large), cfg.rollout, cfg.toy.fused_batch)
    if key not in _FUSED:
        _FUSED.clear()
        _FUSED[key] = FusedRouter(engines.small, engines.large, cfg.rollout, batch=cfg.toy.fused_batch)
    return _FUSED[key]


def _fused_route(router, cfg, problems, policies, *, group_size: int, seed: int, store) -> dict[str, list[Trajectory]]:
    """Fused routing with the host loop's store semantics: stored trajectories are skipped, new ones added."""
    out: dict[str, list[Trajectory]] = {p.policy_id: [] for p in policies}
    groups: dict[tuple, list] = {}
    for pol in policies:
        todo = tuple(i for i, p in enumerate(problems)
                     if store is None or any((str(p.id), g, pol.policy_id) not in store for g in range(group_size)))
        groups.setdefault(todo, []).append(pol)
    for todo, pols in groups.items():
        if not todo:
            continue
        probs = [problems[i] for i in todo]
        res = router.route_many(probs, pols, group_size=group_size, seed=seed, prompt_fn=prompt_fn(cfg),
                                annotate=annotate_fn(cfg))
        for pid, trajs in res.items():
            if store is not None:
                trajs = [t for t in trajs if (t.query_id, t.sample_idx, pid) not in store]
                for t in trajs:
                    store.add(t)
            out[pid] = trajs
    return out


def route(cfg, engines: ToyEngines, problems, policy: Policy, *, group_size: int = 1, seed: int = 0,
          store=None) -> list[Trajectory]:
    router = fused_router(cfg, engines)
    if router is not None:
        return _fused_route(router, cfg, problems, [policy], group_size=group_size, seed=seed,
                            store=store)[policy.policy_id]
    return rollout_sync(problems, engines.small, engines.large, policy, cfg.rollout, group_size=group_size,
                        seed=seed, store=store, prompt_fn=prompt_fn(cfg),
                        annotate=annotate_fn(cfg))


def route_many(cfg, engines: ToyEngines, problems, policies: Sequence[Policy], *, seed: int = 0, store=None,
               progress: bool = True, desc: str = "routing") -> dict[str, list[Trajectory]]:
    """Route ``problems`` with every policy *concurrently* (one event loop, one rollout per policy), so the
    engines batch the steps of all policies together; ``{policy_id: trajectories}``. Every row's sampling
    seed depends only on (seed, query, sample, step), so the result equals routing them one by one."""
    from tqdm.auto import tqdm

    ids = [p.policy_id for p in policies]
    if len(set(ids)) != len(ids):
        raise ValueError(f"route_many: duplicate policy ids {sorted({i for i in ids if ids.count(i) > 1})}")
    router = fused_router(cfg, engines)
    if router is not None:  # one program per batch of rows, all policies mixed
        return _fused_route(router, cfg, problems, policies, group_size=1, seed=seed, store=store)

    async def main():
        bar = tqdm(total=len(policies), desc=desc, disable=not progress, leave=False)

        async def one(pol):
            trajs = await rollout(problems, engines.small, engines.large, pol, cfg.rollout, seed=seed, store=store,
                                  prompt_fn=prompt_fn(cfg),
                                  annotate=annotate_fn(cfg))
            bar.update(1)
            return trajs

        try:
            return await asyncio.gather(*(one(p) for p in policies))
        finally:
            bar.close()

    return dict(zip(ids, asyncio.run(main())))


def collect_exploration(cfg, engines: ToyEngines, policies: Sequence[Policy], problems, out: Path,
                        *, progress: bool = True) -> list[Trajectory]:
    """Stage 1: route ``problems`` with every exploratory policy into ``out/trajectories.jsonl`` (resumable:
    trajectories already in the store are not generated again)."""
    store = TrajectoryStore(Path(out) / "trajectories.jsonl")
    route_many(cfg, engines, problems, policies, seed=cfg.seed, store=store, progress=progress, desc="exploration")
    return list(store.iter())


def collect_exploration_stage(cfg, engines: ToyEngines | None = None, problems=None, *, progress: bool = True
                              ) -> Path:
    """``roro collect``: the exploration suite (``cfg.exploration``) on the first ``explore_problems``
    training problems → ``<out_dir>/exploration/trajectories.jsonl`` (+ ``queries.json``: id → text)."""
    from roro_jax.router.exploration import exploration_suite

    engines = engines or make_engines(cfg)
    problems = train_problems(cfg)[:settings(cfg).explore_problems] if problems is None else problems
    out = Path(cfg.out_dir) / "exploration"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "queries.json", {str(p.id): p.question for p in problems}, indent=1)
    suite = exploration_suite(dataclasses.replace(cfg.exploration, seed=cfg.seed))
    collect_exploration(cfg, engines, suite, problems, out, progress=progress)
    return out / "trajectories.jsonl"


# ------------------------------------------------------------------------------------ router GRPO ---
def reward_batch(trajs: Sequence[Trajectory], process_fn: ProcessFn | None = None) -> dict[str, np.ndarray]:
    """The per-trajectory inputs of the reward registry (``roro_jax.rl.rewards``): ``correct``,
    ``large_share`` (the ``cost`` term is minus it), ``escalation_rate``, ``small_tokens``, ``large_tokens``
    and, with a scorer, ``process``."""
    from roro_jax.rl.stream import reward_inputs

    rb = reward_inputs(trajs)
    if process_fn is not None:
        rb["process"] = np.asarray(process_fn(trajs), np.float32)
        if rb["process"].shape != (len(trajs),):
            raise ValueError(f"process scorer returned shape {rb['process'].shape} for {len(trajs)} trajectories")
    return rb


def make_collect(learner: RouterLearner, engines: ToyEngines, problems, cfg, process_fn: ProcessFn | None = None):
    """``collect(params, key, k)``: route ``queries_per_update`` training problems × G samples with the
    current (sampling) router through the Flax engines, score and pad them into a GRPO batch."""
    G, Q, T = cfg.grpo.group_size, settings(cfg).queries_per_update, cfg.rollout.max_steps
    weights = dict(cfg.reward.weights)
    if weights.get("process", 0.0) and process_fn is None:
        raise ValueError("reward.weights.process > 0 needs a process scorer (the Judge of the rubric stage)")

    def collect(params, key, k):
        rng = np.random.default_rng((cfg.seed, k))
        qs = [problems[i] for i in rng.choice(len(problems), size=min(Q, len(problems)), replace=False)]
        policy = RouterPolicy(learner, params, policy_id="router")
        trajs = route(cfg, engines, qs, policy, group_size=G, seed=int(rng.integers(2**31)))
        arrays = pad_trajectories(trajs, max_steps=T, n_features=get_family(cfg.router.features).dim)
        rb = reward_batch(trajs, process_fn if weights.get("process", 0.0) else None)
        rewards, terms, adv = score_trajectories(rb, cfg)
        batch = {"features": arrays["features"], "actions": arrays["actions"], "old_logp": arrays["logp"],
                 "mask": arrays["mask"], "advantages": np.asarray(adv)}
        info = {"reward": float(np.mean(rewards)), "accuracy": float(rb["correct"].mean()),
                "large_share": float(rb["large_share"].mean()),
                "escalation_rate": float(rb["escalation_rate"].mean()),
                **{f"reward/{n}": float(np.mean(v)) for n, v in terms.items()}}
        return batch, info

    return collect


def train_router_toy(cfg, engines: ToyEngines | None = None, *, problems=None, process_fn: ProcessFn | None = None,
                     resume: bool = True, stop_after: int | None = None, progress: bool = True, desc=None):
    """Online GRPO of a router on ``problems`` (default: the training pool); checkpoints under ``out_dir``."""
    engines = engines or make_engines(cfg)
    learner = RouterLearner(cfg, get_family(cfg.router.features).dim)
    problems = train_problems(cfg) if problems is None else problems
    hist = run_training(learner, make_collect(learner, engines, problems, cfg, process_fn), cfg,
                        resume=resume, stop_after=stop_after, progress=progress, desc=desc or "router GRPO (toy)")
    return learner, hist
