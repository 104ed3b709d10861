"""Routed generation vs plain generation of the same number of tokens, through the same engines, one run.

*Routed*: :func:`roro_jax.rollout.rollout` over ``queries x group`` trajectories with a router MLP deciding
every step (a :class:`~roro_jax.router.mlp.RouterMLP` whose escalate bias gives ~``--escalation`` of steps
to the large model). *Plain*: the same number of requests from the same prompts, each generating its share
of the tokens the routed run generated on that engine in one go (no step delimiter), both engines at once.
Both are measured after an identical warm-up run (same seeds, so the same shapes and no compiles while
timed), interleaved ``--repeats`` times; medians are reported. ``ratio`` = routed tokens/s / plain tokens/s.

    python benchmarks/rollout.py --engine flax --json          # in-process Flax engines, no server
    python benchmarks/rollout.py --engine openai_server --small-url http://127.0.0.1:8001/v1 \\
        --large-url http://127.0.0.1:8002/v1 --small-model toy-small --large-model toy-large \\
        --small-tokenizer models/toy-small --large-tokenizer models/toy-large --json

With ``--engine flax`` and no ``--small-model/--large-model`` folders the models are synthetic step LMs
(:func:`roro_jax.engines.flax_engine.synthetic_step_lm`: tiny Llamas of real per-token cost that write
``"\\n\\n"``-delimited steps of variable length) over the toy character tokenizer; pass trained model
folders to measure those instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script (python benchmarks/NAME.py): import the checkout's roro_jax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roro_jax.benchmarking import annotate, machine, progress, summary_line  # noqa: E402
from roro_jax.buckets import bucket  # noqa: E402


# ---------------------------------------------------------------------------------------------- policy
class MLPRouterPolicy:
    """A router MLP on the ``logprob`` features, sampled per row (``row_uniforms``): the real per-step
    decision cost. Rows are padded to power-of-two batches so the jitted forward compiles a few times."""

    batch_invariant = True

    def __init__(self, rate: float, seed: int = 0):
        import jax
        from flax import nnx

        from roro_jax.config import RouterConfig
        from roro_jax.router.features import LOGPROB_NAMES
        from roro_jax.router.mlp import escalate_prob, make_router

        rate = min(max(rate, 1e-4), 1 - 1e-4)
        model = make_router(RouterConfig(), len(LOGPROB_NAMES), seed=seed, escalate_bias=math.log(rate / (1 - rate)))
        graphdef, self.state = nnx.split(model)
        self.graphdef = graphdef
        self._fn = jax.jit(lambda s, x: escalate_prob(nnx.merge(graphdef, s)(x)))
        self.policy_id = f"bench_router_{rate:g}"

    def device_policy(self):
        """The same sampled router on the device (for the fused sampler): ``u < p`` with the same uniforms."""
        from roro_jax.router.device_policies import DevicePolicy, split64

        t_hi, t_lo = split64(0.5)
        return DevicePolicy(self.policy_id, "router_mlp", (self.graphdef, False),
                            {"state": self.state, "t_hi": t_hi, "t_lo": t_lo}, salt=0xB37C)

    def act(self, obs, rng):
        from roro_jax.router.baselines import row_uniforms

        n = len(obs)
        x = np.zeros((bucket(n, 8), obs.features.shape[1]), np.float32)
        x[:n] = obs.features
        p = np.asarray(self._fn(self.state, x), np.float64)[:n]
        a = (row_uniforms(obs, rng, salt=0xB37C) < p).astype(np.int32)
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return a, np.where(a == 1, np.log(p), np.log1p(-p)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- engines
def flax_engines(args):
    from roro_jax.engines.flax_engine import FlaxEngine, synthetic_step_lm
    from roro_jax.tasks import toy

    kw = dict(max_batch=args.max_batch, batch_buckets=args.batch_buckets, min_prompt_bucket=args.min_prompt_bucket,
              min_new_bucket=16)
    if args.small_model and args.large_model:
        return FlaxEngine(args.small_model, name="small", **kw), FlaxEngine(args.large_model, name="large", **kw)
    tok = toy.build_tokenizer()
    small = synthetic_step_lm(tok, hidden=args.small_hidden, layers=args.small_layers, seed=0, concentration=1.0,
                              answer=0.0)
    large = synthetic_step_lm(tok, hidden=args.large_hidden, layers=args.large_layers, seed=1, concentration=0.3,
                              answer=0.0)
    return FlaxEngine((small, tok), name="small", **kw), FlaxEngine((large, tok), name="large", **kw)


def server_engines(args):
    """The ``openai_server`` engines for ``--small-url``/``--large-url`` (comma-separated URLs for several
    endpoints), through the engines registry ``roro_jax.engines.make_engine``."""
    if not (args.small_url and args.large_url):
        raise SystemExit("--engine openai_server needs --small-url and --large-url")
    try:
        from roro_jax.engines import make_engine
    except ImportError as e:
        raise SystemExit(f"the openai_server engine is not available in this tree ({e})") from e
    small = make_engine("openai_server", model=args.small_model, endpoints=args.small_url.split(","),
                        tokenizer_path=args.small_tokenizer)
    large = make_engine("openai_server", model=args.large_model, endpoints=args.large_url.split(","),
                        tokenizer_path=args.large_tokenizer)
    small.name, large.name = "small", "large"  # record labels (time split keys)
    return small, large


# ---------------------------------------------------------------------------------------------- runs
async def routed_run(problems, small, large, policy, cfg, group, seed):
    from roro_jax.rollout import rollout
    from roro_jax.tasks.toy import trajectory_meta

    stats: dict = {}
    busy0 = {e.name: _stats(e) for e in (small, large)}
    t0 = time.perf_counter()
    trajs = await rollout(problems, small, large, policy, cfg, group_size=group, seed=seed, stats=stats,
                          annotate=trajectory_meta)  # the toy world's labels, as its routed runs make them
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "small_tokens": sum(t.small_tokens for t in trajs),
           "large_tokens": sum(t.large_tokens for t in trajs), "trajectories": len(trajs),
           "steps": sum(len(t.steps) for t in trajs), "escalations": sum(t.n_escalations for t in trajs),
           "decide_s": stats["decider"]["seconds"], "decide_batches": stats["decider"]["batches"]}
    out.update(_engine_deltas(small, large, busy0))
    return out


async def plain_run(prompts_small, prompts_large, small, large, tokens_small, tokens_large, cfg, seed):
    """Each engine: one request per prompt, generating its share of the given tokens without stopping."""
    from dataclasses import replace

    from roro_jax.engines.base import StepRequest

    busy0 = {e.name: _stats(e) for e in (small, large)}

    async def one(engine, prompt_ids, max_tokens, s):
        params = replace(cfg.small_params(), max_tokens=max_tokens, stop=())
        (r,) = await engine.generate([StepRequest(prompt_ids, seed=s)], params)
        return r.n_tokens

    jobs = []
    for engine, prompts, total in ((small, prompts_small, tokens_small), (large, prompts_large, tokens_large)):
        if total <= 0:
            continue
        share = [total // len(prompts) + (1 if i < total % len(prompts) else 0) for i in range(len(prompts))]
        jobs += [one(engine, p, m, seed + i) for i, (p, m) in enumerate(zip(prompts, share)) if m > 0]
    t0 = time.perf_counter()
    counts = await asyncio.gather(*jobs)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "tokens": int(sum(counts))}
    out.update(_engine_deltas(small, large, busy0))
    return out


def fused_run(router, problems, policy, group, seed):
    """The same routed workload through the fused program (roro_jax.engines.fused_routing)."""
    t0 = time.perf_counter()
    before = dict(router.stats)
    from roro_jax.tasks.toy import trajectory_meta

    trajs = router.route_many(problems, [policy], group_size=group, seed=seed,
                              annotate=trajectory_meta)[policy.policy_id]
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "small_tokens": sum(t.small_tokens for t in trajs),
            "large_tokens": sum(t.large_tokens for t in trajs), "trajectories": len(trajs),
            "steps": sum(len(t.steps) for t in trajs), "escalations": sum(t.n_escalations for t in trajs),
            "device_s": router.stats["device_s"] - before["device_s"],
            "host_s": router.stats["host_s"] - before["host_s"],
            "fallback_rows": router.stats["fallback_rows"] - before["fallback_rows"],
            "programs": router.stats["programs"] - before["programs"]}, trajs


def _same_records(a, b) -> bool:
    """Token-identical trajectories, actions and costs."""
    key = lambda t: (t.traj_id, [(s.token_ids, s.action, s.small_tokens, s.large_tokens) for s in t.steps],  # noqa: E731
                     t.correct, t.meta.get("end_reason"))
    return [key(t) for t in a] == [key(t) for t in b]


def _stats(e) -> dict:
    """The Flax engine's busy-time counters (a dict attribute); {} for engines without them (servers)."""
    st = getattr(e, "stats", None)
    return dict(st) if isinstance(st, dict) else {}


def _engine_deltas(small, large, before):
    out = {}
    for e in (small, large):
        st = _stats(e)
        if st and "busy_s" in st:
            out[f"{e.name}_busy_s"] = st["busy_s"] - before[e.name].get("busy_s", 0.0)
            out[f"{e.name}_batches"] = st["batches"] - before[e.name].get("batches", 0)
            rows = st["rows"] - before[e.name].get("rows", 0)
            out[f"{e.name}_rows_per_batch"] = rows / max(out[f"{e.name}_batches"], 1)
    return out


async def bench(args) -> dict:
    from roro_jax.rollout import RolloutConfig, default_prompt
    from roro_jax.tasks import toy

    small, large = flax_engines(args) if args.engine == "flax" else server_engines(args)
    cfg = RolloutConfig(max_steps=args.max_steps, max_step_tokens=args.step_tokens, logprobs=5,
                        max_live=args.max_live, stop_on_answer=False)
    problems = toy.generate(args.queries, seed=0)
    policy = MLPRouterPolicy(args.escalation)
    prompts_s = [small.encode(default_prompt(p)) for p in problems for _ in range(args.group)]
    prompts_l = [large.encode(default_prompt(p)) for p in problems for _ in range(args.group)]

    t0 = time.perf_counter()
    if args.engine == "flax":  # compile every shape a timed run can meet (batch composition varies by timing)
        from roro_jax.rollout import warm_features

        warm_features(cfg)
        longest = max(len(p) for p in prompts_s + prompts_l) + args.max_steps * args.step_tokens
        lengths, L = [], args.min_prompt_bucket
        while L < 2 * longest:
            lengths.append(L)
            L *= 2
        for e in (small, large):
            await e.warmup(lengths, e.batch_buckets, cfg.small_params())
    warm = await routed_run(problems, small, large, policy, cfg, args.group, args.seed)  # same seeds as timed
    await plain_run(prompts_s, prompts_l, small, large, warm["small_tokens"], warm["large_tokens"], cfg, args.seed)
    warmup_s = time.perf_counter() - t0
    fused, fused_router = [], None
    if args.fused:
        from roro_jax.engines.fused_routing import FusedRouter

        n_rows = args.queries * args.group
        fused_router = FusedRouter(small, large, cfg, batch=args.fused_batch or bucket(n_rows))
        t1 = time.perf_counter()
        fused_run(fused_router, problems, policy, args.group, args.seed)  # compile
        fused_compile_s = time.perf_counter() - t1
    routed, plain = [], []
    same = None
    for _ in range(args.repeats):
        routed.append(await routed_run(problems, small, large, policy, cfg, args.group, args.seed))
        plain.append(await plain_run(prompts_s, prompts_l, small, large, routed[-1]["small_tokens"],
                                     routed[-1]["large_tokens"], cfg, args.seed))
        if args.fused:
            row, ftrajs = fused_run(fused_router, problems, policy, args.group, args.seed)
            fused.append(row)
            if same is None:
                from roro_jax.rollout import rollout

                from roro_jax.tasks.toy import trajectory_meta

                htrajs = await rollout(problems, small, large, policy, cfg, group_size=args.group, seed=args.seed,
                                       annotate=trajectory_meta)
                same = _same_records(htrajs, ftrajs)
    for e in (small, large):
        await e.aclose()

    def med(rows, k):
        return statistics.median(r[k] for r in rows if k in r) if any(k in r for r in rows) else None

    r_tokens = routed[-1]["small_tokens"] + routed[-1]["large_tokens"]
    r_tps = r_tokens / med(routed, "wall_s")
    p_tps = med(plain, "tokens") / med(plain, "wall_s")
    res = {
        "benchmark": "rollout", "engine": args.engine, "ratio": r_tps / p_tps,
        "routed_tokens_per_s": r_tps, "plain_tokens_per_s": p_tps,
        "routed_tokens": r_tokens, "plain_tokens": med(plain, "tokens"),
        "routed_wall_s": med(routed, "wall_s"), "plain_wall_s": med(plain, "wall_s"),
        "escalation_rate": routed[-1]["escalations"] / max(routed[-1]["steps"], 1),
        "trajectories": routed[-1]["trajectories"], "steps": routed[-1]["steps"],
        "small_tokens": routed[-1]["small_tokens"], "large_tokens": routed[-1]["large_tokens"],
        "time_split": {
            "routed": {k: med(routed, k) for k in ("small_busy_s", "large_busy_s", "decide_s", "small_batches",
                                                    "large_batches", "small_rows_per_batch",
                                                    "large_rows_per_batch", "decide_batches")},
            "plain": {k: med(plain, k) for k in ("small_busy_s", "large_busy_s", "small_batches", "large_batches",
                                                  "small_rows_per_batch", "large_rows_per_batch")},
        },
        "warmup_s": warmup_s, "repeats": args.repeats,
        "host_loop": "roro_jax.rollout (one engine call per step and model, decisions on the host)",
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "small_engine": repr(small), "large_engine": repr(large),
    }
    if args.fused:
        f_tps = (fused[-1]["small_tokens"] + fused[-1]["large_tokens"]) / med(fused, "wall_s")
        prof = FusedRouter(small, large, cfg, batch=fused_router.batch, profile=True)
        fused_run(prof, problems, policy, args.group, args.seed)  # compile the profiled variant
        prof.stats.pop("phases", None)
        fused_run(prof, problems, policy, args.group, args.seed)
        res["fused"] = {
            "ratio": f_tps / p_tps, "routed_tokens_per_s": f_tps, "wall_s": med(fused, "wall_s"),
            "device_s": med(fused, "device_s"), "host_s": med(fused, "host_s"), "batch": fused_router.batch,
            "programs": fused[-1]["programs"], "fallback_rows": fused[-1]["fallback_rows"],
            "same_trajectories_as_host_loop": same, "compile_s": fused_compile_s,
            "speedup_vs_host_loop": f_tps / r_tps,
            "phase_split_s": {k: round(v, 4) for k, v in prof.stats["phases"].items()},
            "phase_split_note": "one extra run with ordered host callbacks at the phase boundaries (serialised, "
                                "so the phases sum to more than wall_s)",
        }
    return res


def eval_workload(args) -> dict:
    """routes/s on the demo's evaluation workload: 23 operating points (SRM, LRM, 4 random rates, 6
    thresholds, 5 STEER gammas, 6 greedy routers) × ``--eval-problems`` held-out toy problems with the demo
    config's engines and rollout settings, through the host loop and the fused sampler in the same run."""
    import dataclasses

    from roro_jax.config import Config, load_config
    from roro_jax.engines.flax_engine import FlaxEngine
    from roro_jax.engines.fused_routing import FusedRouter
    from roro_jax.rl.trainer import RouterLearner
    from roro_jax.rollout import rollout
    from roro_jax.router.baselines import (ConfidenceThreshold, RandomPolicy, SteerPolicy, fit_gmm2, lrm_only,
                                           srm_only)
    from roro_jax.router.policies import RouterPolicy
    from roro_jax.tasks.toy import trajectory_meta
    from roro_jax.worlds.variants import get_world

    demo = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    world = get_world(demo.toy.variant)
    kw = dict(max_batch=demo.toy.max_batch, batch_buckets=(demo.toy.max_batch,), min_prompt_bucket=demo.toy.prompt_bucket,
              min_new_bucket=demo.rollout.max_step_tokens)
    small = FlaxEngine(world.model_dir("small"), name="toy-small", **kw)
    large = FlaxEngine(world.model_dir("large"), name="toy-large", **kw)
    cfg = demo.rollout
    problems = world.problems("test", args.eval_problems, seed=demo.toy.problem_seed)
    gmm = fit_gmm2(np.r_[np.linspace(0.9, 0.99, 50), np.linspace(0.99, 1.0, 150)])
    pols = [srm_only(), lrm_only()] + [RandomPolicy(r, seed=demo.seed) for r in demo.sweep.random_rates]
    pols += [ConfidenceThreshold(t) for t in demo.sweep.thresholds] + [SteerPolicy(gmm, g) for g in demo.sweep.gammas]
    rcfg = dataclasses.replace(Config(), router=demo.router)
    for i, bias in enumerate((-2.0, -1.0, -0.2, 0.2, 1.0, 2.0)):
        learner = RouterLearner(dataclasses.replace(rcfg, seed=i), 16, escalate_bias=bias)
        pols.append(RouterPolicy(learner, learner.params, greedy=True, policy_id=f"router{i}"))

    def host(probs):
        async def main():
            out = await asyncio.gather(*(rollout(probs, small, large, p, cfg, seed=demo.seed + 777,
                                                 annotate=trajectory_meta) for p in pols))
            for e in (small, large):
                await e.aclose()
            return out
        return asyncio.run(main())

    router = FusedRouter(small, large, cfg, batch=args.eval_batch)
    warm = problems[:min(len(problems), 32)]
    t0 = time.perf_counter()
    host(warm)
    host_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    router.route_many(warm, pols, seed=demo.seed + 777, annotate=trajectory_meta)
    fused_warm = time.perf_counter() - t0
    print("eval workload: timing", file=sys.stderr)
    t0 = time.perf_counter()
    h = host(problems)
    host_s = time.perf_counter() - t0
    before = dict(router.stats)
    t0 = time.perf_counter()
    f = router.route_many(problems, pols, seed=demo.seed + 777, annotate=trajectory_meta)
    fused_s = time.perf_counter() - t0
    n = len(pols) * len(problems)
    same = all(_same_records(a, f[p.policy_id]) for a, p in zip(h, pols))
    return {"operating_points": len(pols), "problems": len(problems), "routes": n,
            "host_routes_per_s": n / host_s, "fused_routes_per_s": n / fused_s, "speedup": host_s / fused_s,
            "host_s": host_s, "fused_s": fused_s, "fused_device_s": router.stats["device_s"] - before["device_s"],
            "fused_host_s": router.stats["host_s"] - before["host_s"],
            "fallback_rows": router.stats["fallback_rows"] - before["fallback_rows"], "fused_batch": router.batch,
            "same_trajectories": same, "warmup_s": {"host": host_warm, "fused": fused_warm},
            "rollout": {"max_steps": cfg.max_steps, "max_step_tokens": cfg.max_step_tokens,
                        "temperature": cfg.temperature}}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("flax", "openai_server"), default="flax")
    ap.add_argument("--small-url"), ap.add_argument("--large-url")
    ap.add_argument("--small-model", help="flax: HF folder; openai_server: served model name")
    ap.add_argument("--large-model", help="flax: HF folder; openai_server: served model name")
    ap.add_argument("--small-tokenizer", help="openai_server: tokenizer folder of the small model")
    ap.add_argument("--large-tokenizer", help="openai_server: tokenizer folder of the large model")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--step-tokens", type=int, default=24)
    ap.add_argument("--escalation", type=float, default=0.3)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--batch-buckets", type=lambda v: tuple(int(x) for x in v.split(",")), default=(8, 32),
                    help="flax: the compiled batch sizes (comma-separated; the largest >= --max-batch)")
    ap.add_argument("--min-prompt-bucket", type=int, default=64)
    ap.add_argument("--max-live", type=int, default=256)
    ap.add_argument("--small-hidden", type=int, default=128)
    ap.add_argument("--small-layers", type=int, default=2)
    ap.add_argument("--large-hidden", type=int, default=192)
    ap.add_argument("--large-layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fused", action="store_true",
                    help="flax: also time the fused routed sampler (one jitted program) on the same workload")
    ap.add_argument("--fused-batch", type=int, default=0, help="rows per fused program (0: all trajectories)")
    ap.add_argument("--eval-problems", type=int, default=0,
                    help="with --fused: also time the demo's evaluation workload (23 operating points x N problems)")
    ap.add_argument("--eval-batch", type=int, default=256, help="rows per fused program for --eval-problems")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = machine()
    res = asyncio.run(bench(args))
    if args.eval_problems:  # synchronous (it runs its own event loops)
        print(json.dumps({k: res[k] for k in ("ratio", "fused") if k in res}), file=sys.stderr)
        res["eval_workload"] = eval_workload(args)
    res = annotate(res, start)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"rollout benchmark ({args.engine}): {res['trajectories']} trajectories, {res['steps']} steps, "
              f"escalation {res['escalation_rate']:.0%}")
        print(f"  routed: {res['routed_tokens']} tokens in {res['routed_wall_s']:.2f} s = "
              f"{res['routed_tokens_per_s']:.0f} tok/s")
        print(f"  plain : {res['plain_tokens']} tokens in {res['plain_wall_s']:.2f} s = "
              f"{res['plain_tokens_per_s']:.0f} tok/s")
        print(f"  ratio routed/plain = {res['ratio']:.2f}  (target >= 0.8)")
        print(f"  time split: {json.dumps(res['time_split'])}")
        if "fused" in res:
            fz = res["fused"]
            print(f"  fused : {fz['routed_tokens_per_s']:.0f} tok/s, ratio routed/plain = {fz['ratio']:.2f} "
                  f"({fz['speedup_vs_host_loop']:.1f}x the host loop; same trajectories: "
                  f"{fz['same_trajectories_as_host_loop']})")
            print(f"  fused phase split (s): {json.dumps(fz['phase_split_s'])}")
        if "eval_workload" in res:
            ev = res["eval_workload"]
            print(f"  demo eval workload ({ev['routes']} routes): host {ev['host_routes_per_s']:.1f} routes/s, "
                  f"fused {ev['fused_routes_per_s']:.1f} routes/s ({ev['speedup']:.1f}x; same: {ev['same_trajectories']})")
        print(summary_line(res))
    return res


if __name__ == "__main__":
    main()
