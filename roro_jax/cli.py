"""The ``roro`` command.

    roro demo   [-c CONFIG] [--quick] [key=value ...]   the whole pipeline on the built-in world
    roro router [-c CONFIG] [key=value ...]             router GRPO training (resumes from checkpoints)
    roro collect [-c CONFIG] [key=value ...]            exploratory trajectories (toy world) into out_dir
    roro pairs  [-c CONFIG] --trajectories F --out F    preference pairs from a trajectory store
    roro rubric [-c CONFIG] --trajectories F --pairs F  Judge/Rubricor alternation with the gate
    roro eval   [-c CONFIG] [key=value ...]             train + evaluate every method, report + plot
    roro eval   --points F --out DIR                    re-render a report from point records
    roro config [-c CONFIG] [key=value ...]             print the resolved config
    roro bench router-step [--json] [...]               router update: JAX vs PyTorch eager
    roro bench lm [--json] [...]                        LM scoring/sampling: Flax vs PyTorch

The CLI only parses arguments and calls the stages in ``pipelines/``; no stage logic lives here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path

from roro_jax.config import ConfigError, load_config, to_yaml
from roro_jax.types import InputError

BENCHMARKS = {"router-step": "benchmarks.router_step", "lm": "benchmarks.lm_forward",
              "rollout": "benchmarks.rollout"}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. grpo.lr=1e-3")


def _load(args):
    return load_config(args.config, args.overrides)


def cmd_config(args) -> int:
    print(to_yaml(_load(args)), end="")
    return 0


ROUTER_TRAINERS = {"synthetic": "pipelines.router_synthetic:train_router_synthetic",
                   "replay": "pipelines.replay:train_router_replay", "toy": "pipelines.roro:train_router",
                   "live": "pipelines.roro:train_router"}
EVAL_PIPELINES = {"replay": "pipelines.replay:run_replay", "toy": "pipelines.roro:eval_pipeline",
                  "live": "pipelines.roro:eval_pipeline"}


def _resolve(table: dict, world: str, what: str):
    if world not in table:
        raise ConfigError(f"{what}: world={world!r} is not available (available: {sorted(table)})")
    mod, fn = table[world].split(":")
    return getattr(importlib.import_module(mod), fn)


def cmd_router(args) -> int:
    cfg = _load(args)
    train = _resolve(ROUTER_TRAINERS, cfg.world, "roro router")
    learner, hist = train(cfg, resume=not args.fresh)
    if hist:
        last = hist[-1]
        print(f"update {last['update']}: reward {last['reward']:.3f} accuracy {last['accuracy']:.3f} "
              f"large-share {last['large_share']:.3f}  (log: {Path(cfg.out_dir) / 'metrics.jsonl'})")
    return 0


def cmd_demo(args) -> int:
    from pipelines.demo import demo_config, run_demo

    cfg = demo_config(args.config, args.overrides, quick=args.quick)
    run_demo(cfg, quick=args.quick)
    return 0


def cmd_pairs(args) -> int:
    from roro_jax.pairs import pairs_from_file

    cfg = _load(args)
    stats = pairs_from_file(args.trajectories, args.out, cfg.pairs, seed=cfg.seed)
    print(json.dumps(stats, indent=2, default=str))
    return 0


COLLECTORS = {"toy": "pipelines.roro:collect_stage", "live": "pipelines.roro:collect_stage"}


def cmd_collect(args) -> int:
    cfg = _load(args)
    path = _resolve(COLLECTORS, cfg.world, "roro collect")(cfg)
    print(f"trajectories: {path}")
    return 0


def cmd_rubric(args) -> int:
    from pipelines.rubric import rubric_stage_from_files

    cfg = _load(args)
    res = rubric_stage_from_files(cfg, args.trajectories, args.pairs, args.queries)
    print(f"results: {res['path']}")
    return 0


def cmd_eval(args) -> int:
    cfg = _load(args)
    if args.points:
        from roro_jax.eval.report import report_from_file

        if not args.out:
            raise ConfigError("roro eval --points needs --out")
        for kind, path in report_from_file(args.points, args.out, cfg.eval).items():
            print(f"{kind}: {path}")
        return 0
    results = _resolve(EVAL_PIPELINES, cfg.world, "roro eval")(cfg)
    for name, paths in results.items():
        print(f"{name}: {paths['report']}")
    return 0


def cmd_bench(args) -> int:
    mod = BENCHMARKS.get(args.name)
    if mod is None:
        print(f"unknown benchmark {args.name!r}; available: {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        print(f"benchmark {args.name!r} is not available: {e}", file=sys.stderr)
        return 2
    module.main(args.bench_args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roro", description="RoRo stepwise-routing training and evaluation")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("demo", help="run the whole pipeline on the built-in world")
    _config_args(s)
    s.add_argument("--quick", action="store_true", help="a few-minute variant (CI)")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("router", help="train the router with GRPO")
    _config_args(s)
    s.add_argument("--fresh", action="store_true", help="start over (deletes the checkpoints in out_dir)")
    s.set_defaults(fn=cmd_router)

    s = sub.add_parser("pairs", help="build preference pairs from a trajectory store")
    _config_args(s)
    s.add_argument("--trajectories", required=True, help="trajectory JSONL")
    s.add_argument("--out", required=True, help="pairs JSONL to write")
    s.set_defaults(fn=cmd_pairs)

    s = sub.add_parser("collect", help="route exploratory policies and store the trajectories (toy world)")
    _config_args(s)
    s.set_defaults(fn=cmd_collect)

    s = sub.add_parser("rubric", help="train Judge and Rubricor alternately (validation gate) on stored pairs")
    _config_args(s)
    s.add_argument("--trajectories", required=True, help="trajectory JSONL (roro collect)")
    s.add_argument("--pairs", required=True, help="pairs JSONL (roro pairs)")
    s.add_argument("--queries", help="JSON object query id -> query text (default: empty texts)")
    s.set_defaults(fn=cmd_rubric)

    s = sub.add_parser("eval", help="train/evaluate the world's methods and write the report "
                                     "(or, with --points, re-render a report from point records)")
    _config_args(s)
    s.add_argument("--points", help="points JSONL (roro_jax.eval.records) to re-render")
    s.add_argument("--out", help="report folder for --points")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("config", help="print the resolved config")
    _config_args(s)
    s.set_defaults(fn=cmd_config)

    s = sub.add_parser("bench", help="throughput benchmarks (ours vs baseline, same run)")
    s.add_argument("name", help=f"one of {sorted(BENCHMARKS)}")
    s.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (a config, a record or a file: :class:`~roro_jax.types.InputError`, or an
    input file that does not exist) is reported as one ``roro: error: ...`` line naming the file and line
    or the key, with exit status 2 (as argparse does for bad arguments); no traceback."""
    args = build_parser().parse_args(argv)
    show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return args.fn(args)
    except (InputError, FileNotFoundError, IsADirectoryError) as e:
        print("roro: error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the project (e.g. no pairs built, a checkpoint fallback) as one ``roro: warning:``
    line; other libraries' warnings keep Python's format."""
    if category.__module__.startswith("roro_jax") or category is RuntimeWarning or "roro_jax" in str(filename):
        print(f"roro: warning: {' '.join(str(message).splitlines())}", file=file or sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())
