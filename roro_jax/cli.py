"""The ``roro`` command.

    roro demo   [-c CONFIG] [--quick] [key=value ...]   the whole RoRo pipeline (default: the shipped
                                                        configs/demo.yaml, toy world, as `make demo`)
    roro router [-c CONFIG] [--fresh] [key=value ...]   router GRPO training (resumes from out_dir by default)
    roro collect [-c CONFIG] [key=value ...]            exploratory trajectories (toy / live world) into out_dir
    roro pairs  [-c CONFIG] --trajectories F --out F    preference pairs from a trajectory store
    roro rubric [-c CONFIG] --trajectories F --pairs F  Judge/Rubricor alternation with the gate
    roro eval   [-c CONFIG] [key=value ...]             train + evaluate every method, report + plot
    roro eval   --points F --out DIR                    re-render a report from point records
    roro config [-c CONFIG] [key=value ...]             print the resolved config
    roro bench NAME [--json] [...]                      throughput benchmarks, ours vs a baseline in the same
                                                        run (NAME: router-step, lm, rollout, judge, memory)

Every command that takes a config also takes ``--plugin MODULE`` (repeatable): user code that registers
reward terms, estimators, feature families, ... (:mod:`roro_jax.plugins`), imported, with the config's
``plugins:`` list and the installed ``roro_jax.plugins`` entry points, before the config is validated.

The CLI only parses arguments and calls the config's world's entry point for the command (the world
registry, :mod:`roro_jax.worlds.base`; the built-in worlds' stages live in ``pipelines/``); no stage logic
lives here. Before a training command compiles anything, :func:`roro_jax.preflight.preflight` checks the
config against the machine and the run folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path

from roro_jax.config import ConfigError, load_config, to_yaml
from roro_jax.engines.base import EngineError
from roro_jax.types import InputError

# name -> (module under roro_jax.benchmarks, what it measures); the modules ship in the package
BENCHMARKS = {
    "router-step": ("router_step", "router GRPO update: JAX vs PyTorch eager (--mode for the parallel modes)"),
    "lm": ("lm_forward", "LM scoring and sampling: Flax vs transformers PyTorch (SmolLM2-135M)"),
    "rollout": ("rollout", "routed generation vs plain generation (toy Flax engines or vLLM servers)"),
    "judge": ("judge_train", "Judge Bradley-Terry training step: JAX vs PyTorch eager"),
    "memory": ("memory", "peak RSS of collecting into a store and training over it, 10k vs 100k trajectories"),
}


def shipped_config(name: str) -> Path:
    """A config shipped with the package (``roro_jax/configs``; the repository's ``configs/`` in a checkout)."""
    from roro_jax.paths import PACKAGE_DIR

    return PACKAGE_DIR / "configs" / name


def config_path(arg: str | None) -> str | None:
    """``-c`` as given; a ``configs/NAME.yaml`` (or ``NAME.yaml``) that does not exist here but ships with
    the package (an installed wheel, run outside a checkout) resolves to the shipped file."""
    if arg is None or Path(arg).exists():
        return arg
    p = Path(arg)
    if p.parent in (Path("."), Path("configs")) and shipped_config(p.name).is_file():
        return str(shipped_config(p.name))
    return arg


def _config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    where = f"default: the shipped {default}" if default else "default: built-in defaults, world=synthetic"
    p.add_argument("-c", "--config", help=f"YAML config, e.g. configs/demo.yaml ({where})")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (a module name, or a .py file) before the config is validated: user code "
                        "that registers reward terms, KL / advantage estimators, feature families, ... "
                        "(repeatable; default: none; see also the config's plugins: list)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides applied after the file, e.g. grpo.lr=1e-3 seed=1 "
                        "(`roro config` prints every key and its value)")


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a run in out_dir although its saved config.yaml differs in training keys "
                        "(default: refuse and list the keys)")


def _overrides(args) -> list[str]:
    extra = ["checkpoint.allow_config_change=true"] if getattr(args, "allow_config_change", False) else []
    return [*extra, *args.overrides]


def _load(args):
    return load_config(config_path(args.config), _overrides(args))


def _preflight(cfg, command: str, fresh: bool = False) -> None:
    from roro_jax.preflight import preflight

    preflight(cfg, command, fresh=fresh)


def cmd_config(args) -> int:
    print(to_yaml(_load(args)), end="")
    return 0


def _entry(cfg, what: str):
    """The world's entry point for a command (:class:`roro_jax.worlds.base.World`): a world that lacks it is
    one ``roro: error:`` line naming the command, the world and the worlds that have it."""
    from roro_jax.worlds.base import get_world

    return get_world(cfg.world).require(what)


def _worlds_with(what: str) -> list[str]:
    from roro_jax.worlds.base import WORLDS

    return [name for name, w in WORLDS.items() if getattr(w, what) is not None]


def cmd_router(args) -> int:
    cfg = _load(args)
    train = _entry(cfg, "train_router")
    _preflight(cfg, "router", fresh=args.fresh)
    learner, hist = train(cfg, resume=not args.fresh)
    from roro_jax.preflight import router_run_dir

    if hist:
        last = hist[-1]
        print(f"update {last['update']}: reward {last['reward']:.3f} accuracy {last['accuracy']:.3f} "
              f"large-share {last['large_share']:.3f}  (log: {router_run_dir(cfg, 'router') / 'metrics.jsonl'})")
    return 0


def cmd_demo(args) -> int:
    from pipelines.demo import demo_config, run_demo

    path = config_path(args.config) if args.config else str(shipped_config("demo.yaml"))
    cfg = demo_config(path, _overrides(args), quick=args.quick)
    _preflight(cfg, "demo")
    run_demo(cfg, quick=args.quick)
    return 0


def cmd_pairs(args) -> int:
    from roro_jax.pairs import pairs_from_file

    from roro_jax.jsonio import read_queries

    cfg = _load(args)
    queries = read_queries(args.queries) if args.queries else None
    stats = pairs_from_file(args.trajectories, args.out, cfg.pairs, seed=cfg.seed, queries=queries)
    print(json.dumps(stats, indent=2, default=str))
    return 0


def cmd_collect(args) -> int:
    cfg = _load(args)
    collect = _entry(cfg, "collect")
    _preflight(cfg, "collect")
    path = collect(cfg)
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
    pipeline = _entry(cfg, "evaluate")
    _preflight(cfg, "eval")
    results = pipeline(cfg)
    for name, paths in results.items():
        print(f"{name}: {paths['report']}")
    return 0


def cmd_bench(args) -> int:
    entry = BENCHMARKS.get(args.name)
    if entry is None:
        raise InputError(f"unknown benchmark {args.name!r}; available: {', '.join(BENCHMARKS)}")
    try:
        module = importlib.import_module(f"roro_jax.benchmarks.{entry[0]}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("roro_jax"):
            raise InputError(f"benchmark {args.name!r}: its module is not installed ({e}); reinstall roro_jax "
                             "(the benchmarks ship as roro_jax.benchmarks)") from None
        raise
    try:
        module.main(args.bench_args)
    except ModuleNotFoundError as e:
        if e.name in ("torch", "transformers"):
            raise InputError(f"benchmark {args.name!r} needs {e.name} for its baseline: "
                             "pip install 'roro_jax[compare]'") from None
        raise
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roro", description="RoRo stepwise-routing training and evaluation. "
                                "Every subcommand takes -c CONFIG and key=value overrides; `roro SUBCOMMAND "
                                "--help` says more.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")

    s = sub.add_parser("demo", help="the whole RoRo pipeline on the toy world (what `make demo` runs)",
                       description="Run the whole pipeline: exploration, pairs, Judge/Rubricor with the gate, "
                                   "GRPO and RoRo routers over a λ_c sweep, every baseline, report and plot in "
                                   "<out_dir>/report. Without -c it runs the shipped configs/demo.yaml (toy "
                                   "world), exactly as `make demo`; -c configs/router_synthetic.yaml runs the "
                                   "synthetic world's demo. Reruns resume every stage from out_dir.")
    _config_args(s, default="configs/demo.yaml")
    s.add_argument("--quick", action="store_true",
                   help="every stage on a few problems and updates (a few minutes; CI); your overrides still win "
                        "(default: off, the full demo)")
    _training_args(s)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("router", help="train a router with GRPO (resumes by default)",
                       description="Train the router with GRPO in the config's world. By default it resumes "
                                   "from the checkpoints in out_dir (or in <out_dir>/router for the toy and live "
                                   "worlds) and refuses to resume under a config that differs in a training key; "
                                   "--fresh starts over. A finished run says so and prints its last metrics.")
    _config_args(s)
    s.add_argument("--fresh", action="store_true",
                   help="start over: delete the checkpoints in out_dir instead of resuming from them "
                        "(default: off, resume)")
    _training_args(s)
    s.set_defaults(fn=cmd_router)

    s = sub.add_parser("pairs", help="build preference pairs from a trajectory store",
                       description="Build outcome / cost / process preference pairs (pairs.* keys) from a "
                                   "trajectory JSONL file and write them as JSONL (+ <out>.stats.json).")
    _config_args(s)
    s.add_argument("--trajectories", required=True, help="trajectory JSONL (what roro collect writes); required")
    s.add_argument("--out", required=True, help="pairs JSONL to write; required")
    s.add_argument("--queries", help="JSON object query id -> query text (exploration/queries.json); needed by "
                                     "pairs.process_label=checkpoints")
    s.set_defaults(fn=cmd_pairs)

    s = sub.add_parser("collect", help=f"route the exploratory policies and store their trajectories ({' / '.join(_worlds_with('collect'))} "
                            "world)",
                       description=f"Route the exploration suite (exploration.* keys) over the world's training "
                                   f"problems and append the trajectories to <out_dir>/exploration/"
                                   f"trajectories.jsonl (resumable, no duplicates). Worlds: "
                                   f"{', '.join(_worlds_with('collect'))}.")
    _config_args(s)
    s.set_defaults(fn=cmd_collect)

    s = sub.add_parser("rubric", help="train Judge and Rubricor alternately (validation gate) on stored pairs",
                       description="The rubric stage on stored trajectories and pairs; writes "
                                   "<out_dir>/rubric/results.json, the gate log and checkpoints.")
    _config_args(s)
    s.add_argument("--trajectories", required=True, help="trajectory JSONL (roro collect); required")
    s.add_argument("--pairs", required=True, help="pairs JSONL (roro pairs); required")
    s.add_argument("--queries", help="JSON object query id -> query text (default: empty texts)")
    s.set_defaults(fn=cmd_rubric)

    s = sub.add_parser("eval", help="train/evaluate the world's methods and write the report "
                            "(or, with --points, re-render a report from point records)",
                       description=f"Train and evaluate every method of the world ({', '.join(_worlds_with('evaluate'))}) and "
                                   "write <out_dir>/report per test set; or re-render a report from a points file.")
    _config_args(s)
    s.add_argument("--points", help="points JSONL (roro_jax.eval.records) to re-render instead of running "
                                    "(default: none, run the pipeline)")
    s.add_argument("--out", help="report folder for --points (required with --points)")
    _training_args(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("config", help="print the resolved config (every key and its value)")
    _config_args(s)
    s.set_defaults(fn=cmd_config)

    listing = "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items())
    s = sub.add_parser("bench", help="throughput benchmarks (ours vs baseline, same run)",
                       description=f"Run a benchmark; `roro bench NAME --help` lists its options. {listing}. "
                                   "Each prints a table (or one JSON object with --json) with the CPU model and "
                                   "the load average; a load above the core count adds a warning.")
    s.add_argument("name", metavar="NAME", help=f"one of: {', '.join(BENCHMARKS)}")
    s.add_argument("bench_args", nargs=argparse.REMAINDER,
                   help="options passed to the benchmark (e.g. --json; each states its defaults in its --help)")
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command. Bad input (a config, a record or a file: :class:`~roro_jax.types.InputError`, or an
    input file that does not exist) is reported as one ``roro: error: ...`` line naming the file and line
    or the key, with exit status 2 (as argparse does for bad arguments); no traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after the options (argparse takes only one run of positionals)
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    show = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            _load_plugins(args)
            return args.fn(args)
    except (InputError, FileNotFoundError, IsADirectoryError) as e:
        print("roro: error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    except EngineError as e:  # a server that died or refused, after the engine's retries: exit 1, no traceback
        print("roro: error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = show


def _load_plugins(args) -> None:
    """The installed ``roro_jax.plugins`` entry points, then every ``--plugin``, before the config loads."""
    from roro_jax.plugins import load_entry_points, load_plugins

    load_entry_points()
    load_plugins(getattr(args, "plugin", []))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the project (e.g. no pairs built, a checkpoint fallback) as one ``roro: warning:``
    line; other libraries' warnings keep Python's format."""
    if category.__module__.startswith("roro_jax") or category is RuntimeWarning or "roro_jax" in str(filename):
        kind = "" if category in (UserWarning, RuntimeWarning) else f"{category.__name__}: "
        print(f"roro: warning: {kind}{' '.join(str(message).splitlines())}", file=file or sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())
