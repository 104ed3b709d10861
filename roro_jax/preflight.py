"""Checks of a config against the machine and the run folder, made by ``roro`` before anything compiles.

A config can be valid on its own (types, choices, bounds: :func:`roro_jax.config.load_config`) and still
fail only after minutes of compiling and collecting: more devices than are visible, a batch that does not
split into the minibatches over the devices, a process reward in a world without a Judge, a checkpoint
made under another config. Each check here turns one such mistake into one
:class:`~roro_jax.config.ConfigError` naming the key(s) and the fix, raised before the first JAX
computation (no XLA compile; ``jax.device_count()`` and reading checkpoint metadata compile nothing).

The checks are a registry: ``@register_check("name")`` adds ``fn(cfg, ctx)``; :func:`preflight` runs
them all. ``ctx.command`` is the ``roro`` subcommand (``router``, ``demo``, ``eval``, ``collect``) and
``ctx.fresh`` says whether the run starts over (``--fresh``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from roro_jax.config import ConfigError
from roro_jax.worlds.base import get_world


@dataclass(frozen=True)
class Context:
    command: str
    fresh: bool = False


Check = Callable[[object, Context], None]
CHECKS: dict[str, Check] = {}

TRAINING_COMMANDS = ("router", "demo", "eval")
DATA_PARALLEL = ("shard_map", "pmap", "jit_sharded")


def register_check(name: str) -> Callable[[Check], Check]:
    def deco(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn
    return deco


def preflight(cfg, command: str, *, fresh: bool = False) -> None:
    """Run every registered check; the first failure raises :class:`ConfigError`."""
    ctx = Context(command, fresh)
    for fn in CHECKS.values():
        fn(cfg, ctx)


# ------------------------------------------------------------------------------------ world facts ---
def queries_per_update(cfg) -> tuple[int, str] | None:
    """``(queries routed per update, the key that sets it)`` for the world's router training (None: the
    world does not say; :class:`roro_jax.worlds.base.World`)."""
    fn = get_world(cfg.world).queries_per_update
    return None if fn is None else fn(cfg)


def _multiprocess(cfg) -> bool:
    from roro_jax import distributed

    try:
        coordinator, n, _ = distributed.settings(cfg.parallel)
        return n != 1 or coordinator == distributed.AUTO
    except Exception:  # noqa: BLE001 - settings errors are reported where the runtime starts
        return False


def _visible_devices() -> int:
    import jax

    return jax.device_count()


# ------------------------------------------------------------------------------------------ checks ---
@register_check("devices")
def check_devices(cfg, ctx: Context) -> None:
    p = cfg.parallel
    if ctx.command not in TRAINING_COMMANDS or not p.devices or _multiprocess(cfg):
        return
    n = _visible_devices()
    if p.devices > n:
        raise ConfigError(f"config key 'parallel.devices'={p.devices}: only {n} devices are visible; set "
                          f"parallel.devices to at most {n} (0 = all)")
    if p.mode == "single" and p.devices > 1:
        raise ConfigError(f"config key 'parallel.devices'={p.devices} with parallel.mode=single (one device); "
                          f"set parallel.mode to one of {list(DATA_PARALLEL)}")


@register_check("batch_split")
def check_batch_split(cfg, ctx: Context) -> None:
    if ctx.command not in TRAINING_COMMANDS:
        return
    per_update = queries_per_update(cfg)
    if per_update is None:
        return
    q, qkey = per_update
    g, mb = cfg.grpo.group_size, cfg.grpo.minibatches
    n = 1
    if cfg.parallel.mode in DATA_PARALLEL and not _multiprocess(cfg):
        n = cfg.parallel.devices or _visible_devices()
    b = q * g
    if b % mb == 0 and (b // mb) % n == 0:
        return
    need = mb * n
    fix_q = next(x for x in range(q, q + need + 1) if (x * g) % need == 0)
    where = f" over {n} devices (parallel.mode={cfg.parallel.mode})" if n > 1 else ""
    raise ConfigError(f"config keys '{qkey}'={q} x 'grpo.group_size'={g} = {b} trajectories per update do not split "
                      f"into 'grpo.minibatches'={mb} equal minibatches{where}: the batch must be a multiple of "
                      f"{need}; e.g. set {qkey}={fix_q}, or change grpo.group_size / grpo.minibatches"
                      + (" / parallel.devices" if n > 1 else ""))


@register_check("process_reward")
def check_process_reward(cfg, ctx: Context) -> None:
    if ctx.command not in TRAINING_COMMANDS or not dict(cfg.reward.weights).get("process", 0.0):
        return
    reasons = get_world(cfg.world).no_process_scorer
    why = reasons.get(None) or reasons.get(ctx.command)
    if why:
        raise ConfigError(f"config key 'reward.weights.process'={cfg.reward.weights['process']:g}: {why}")


@register_check("process_label")
def check_process_label(cfg, ctx: Context) -> None:
    """``pairs.process_label`` names a score the world's routes can be given (``checkpoints`` needs toy
    problems' reference steps)."""
    why = get_world(cfg.world).no_process_label.get(cfg.pairs.process_label)
    if why:
        raise ConfigError(f"config key 'pairs.process_label'={cfg.pairs.process_label!r}: the {cfg.world} world "
                          f"cannot order process pairs by it: {why}; set pairs.process_label=quality")


@register_check("reward_fields")
def check_reward_fields(cfg, ctx: Context) -> None:
    """Every reward term with a non-zero weight reads only fields the world's reward batch holds
    (:mod:`roro_jax.worlds.reward_fields`; a term declares its fields with ``register_reward(..., needs=)``)."""
    if ctx.command not in TRAINING_COMMANDS:
        return
    from roro_jax.rl.rewards import reward_needs

    has = get_world(cfg.world).reward_fields
    for term, w in dict(cfg.reward.weights).items():
        missing = [f for f in reward_needs(term) if f not in has] if w else []
        if missing:
            raise ConfigError(f"config key 'reward.weights.{term}'={w:g}: reward term {term!r} needs the reward "
                              f"field {missing[0]!r}, which the {cfg.world} world's reward batch lacks (it holds "
                              f"{sorted(has)}); set reward.weights.{term}=0 or use a world with that field")


@register_check("feature_family")
def check_feature_family(cfg, ctx: Context) -> None:
    """``router.features`` names a family the world computes (the toy and live worlds compute ``logprob``
    from the engines' top-k log-probs; ``prm`` needs a PRM scorer, the replay world's)."""
    have = get_world(cfg.world).feature_families
    if have is not None and cfg.router.features not in have:
        raise ConfigError(f"config key 'router.features'={cfg.router.features!r}: the {cfg.world} world computes "
                          f"only the feature families {sorted(have)}; set router.features={sorted(have)[0]}")


@register_check("tensorboard")
def check_tensorboard(cfg, ctx: Context) -> None:
    from roro_jax.rl.metrics_log import check_tensorboard as check

    if ctx.command in TRAINING_COMMANDS:
        check(cfg)


def router_run_dir(cfg, command: str) -> Path | None:
    """The folder ``roro router`` trains in (None for commands that train several routers: each is
    checked when it starts): ``<out_dir>/router`` in the toy and live worlds with a process reward (the
    exploration, pairs and rubric stages fill ``out_dir`` first, :func:`pipelines.roro.train_router`),
    else ``out_dir``."""
    if command != "router":
        return None
    sub = get_world(cfg.world).router_subdir
    staged = sub and dict(cfg.reward.weights).get("process", 0.0)
    return Path(cfg.out_dir) / sub if staged else Path(cfg.out_dir)


def router_in_features(cfg) -> int:
    from roro_jax.router.features import get_family

    fn = get_world(cfg.world).router_in_features
    return fn(cfg) if fn is not None else get_family(cfg.router.features).dim


@register_check("run_dir")
def check_run_dir(cfg, ctx: Context) -> None:
    """Resuming ``roro router``: the saved config must match (:mod:`roro_jax.rl.run_dir`) and the newest
    checkpoint's parameter shapes must fit the router the config builds (``--fresh`` skips both)."""
    out = router_run_dir(cfg, ctx.command)
    if out is None or ctx.fresh:
        return
    ckdir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else out / "checkpoints"
    steps = sorted(int(p.name) for p in ckdir.glob("*") if p.is_dir() and p.name.isdigit()) if ckdir.is_dir() else []
    if not steps:
        return
    from roro_jax.rl.run_dir import check_resume_config

    check_resume_config(cfg, out)
    from flax import nnx

    from roro_jax.rl.checkpoint import CheckpointMismatchError, check_param_shapes
    from roro_jax.router.mlp import make_router

    abstract = nnx.state(nnx.eval_shape(lambda: make_router(cfg.router, router_in_features(cfg), seed=cfg.seed)))
    try:
        check_param_shapes(ckdir, steps[-1], abstract)
    except CheckpointMismatchError:
        raise
    except Exception:  # noqa: BLE001 - unreadable metadata: the restore's fallback handles corrupt steps
        return
