"""The router learner: owns the policy's graph, the train state, the jitted update and checkpoints.

The learner knows nothing about where trajectories come from: the caller hands it padded routing
batches (``roro_jax.types.pad_trajectories`` + advantages) and receives metrics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from roro_jax import distributed
from roro_jax.rl.checkpoint import Checkpointer
from roro_jax.rl.reference import reference_params
from roro_jax.rl.losses import POLICY_LOSSES
from roro_jax.rl.update import (DATA, as_hparams, init_state, make_optimizer, make_router_update, policy_logp,
                                router_hparams, set_hyperparams)
from roro_jax.router.mlp import RouterMLP, escalate_prob, make_router


def make_mesh(devices: int = 0) -> Mesh:
    """The 1-D ``data`` mesh over the first ``devices`` devices (0 = all). With several processes
    (``roro_jax.distributed``) ``jax.devices()`` lists every process's devices, ordered by process, and
    the mesh must span all of them."""
    devs = jax.devices()
    if devices:
        if devices > len(devs):
            raise ValueError(f"parallel.devices={devices} but only {len(devs)} devices are visible")
        if jax.process_count() > 1 and devices != len(devs):
            raise ValueError(f"parallel.devices={devices}: with {jax.process_count()} processes the mesh must "
                             f"span all {len(devs)} devices (use 0)")
        devs = devs[:devices]
    return Mesh(np.array(devs), (DATA,))


# compiled router updates shared by learners of the same structure: hyperparameters are data (the loss's in
# ``TrainState.hparams``, the learning rate in the optimiser state), so a method x lambda_c sweep compiles once
_UPDATES: dict[tuple, Any] = {}
_MAX_CACHED = 32


def shared_router_update(graphdef, tx, grpo_cfg, *, mode: str, mesh, policy_loss):
    """The router update for this structure, built once per process and reused by every learner with the
    same graph, loss, ``epochs``/``minibatches``/``agg``/``kl``, mode and mesh (``tx`` must be
    :func:`~roro_jax.rl.update.make_optimizer`'s, whose values live in its state)."""
    loss_fn = POLICY_LOSSES.get(policy_loss) if isinstance(policy_loss, str) else policy_loss
    key = (graphdef, loss_fn, grpo_cfg.epochs, grpo_cfg.minibatches, grpo_cfg.agg, grpo_cfg.kl, mode, mesh)
    if key not in _UPDATES:
        if len(_UPDATES) >= _MAX_CACHED:
            _UPDATES.clear()
        _UPDATES[key] = make_router_update(graphdef, tx, grpo_cfg, mode=mode, mesh=mesh, policy_loss=loss_fn)
    return _UPDATES[key]


class RouterLearner:
    """GRPO learner for a :class:`RouterMLP`.

    Args:
      cfg: the full ``Config`` (uses ``router``, ``grpo``, ``parallel``, ``seed``).
      in_features: router input width.
      escalate_bias: initial escalate logit bias.
      policy_loss: the policy loss, a registered name (:data:`~roro_jax.rl.losses.POLICY_LOSSES`) or a
        function ``fn(logp, batch, hp) -> terms``; default ``cfg.grpo.loss``.

    The hyperparameters are data: the learning rate and clip norm in the optimiser state, the loss's numbers
    (:func:`~roro_jax.rl.update.router_hparams`) in ``state.hparams``. Learners that differ only in them (a
    method x lambda_c sweep) share one compiled update.
    """

    def __init__(self, cfg, in_features: int, escalate_bias: float = 0.0, *, policy_loss=None):
        self.cfg = cfg
        # several processes (parallel.num_processes / RORO_NUM_PROCESSES > 1): join the distributed runtime
        # before the first JAX computation; a no-op for one process or when already initialized
        multiprocess = distributed.initialize_from_config(cfg.parallel)
        if multiprocess and cfg.parallel.mode not in ("shard_map", "jit_sharded"):
            raise ValueError(f"parallel.mode={cfg.parallel.mode!r} is process-local; training over "
                             f"{jax.process_count()} processes needs shard_map or jit_sharded")
        model: RouterMLP = make_router(cfg.router, in_features, seed=cfg.seed, escalate_bias=escalate_bias)
        self.graphdef, params = nnx.split(model)
        self.tx = make_optimizer(cfg.grpo.lr, cfg.grpo.max_grad_norm)
        self.hparams = router_hparams(cfg.grpo)
        self.policy_loss = policy_loss if policy_loss is not None else cfg.grpo.loss
        # grpo.reference when beta > 0
        self.state = init_state(params, self.tx, reference_params(cfg.grpo, params), self.hparams)
        mode = cfg.parallel.mode
        self.mesh = make_mesh(cfg.parallel.devices) if mode in ("shard_map", "jit_sharded", "pmap") else None
        if mode != "pmap" and self.mesh is not None:  # replicated on the mesh from the start (global over processes)
            self.state = distributed.to_global(self.state, NamedSharding(self.mesh, P()))
        self._update = shared_router_update(self.graphdef, self.tx, cfg.grpo, mode=mode, mesh=self.mesh,
                                            policy_loss=self.policy_loss)
        self._logits = jax.jit(self.apply)
        self._logp = jax.jit(lambda p, x, a: policy_logp(self.graphdef, p, x, a)[0])

    def apply(self, params, features):
        """Pure ``logits = router(features)`` for use inside the caller's own jitted code."""
        return nnx.merge(self.graphdef, params)(features)

    @property
    def params(self):
        return self.state.params

    @property
    def step(self) -> int:
        return int(self.state.step)

    def update(self, batch: dict[str, Any], rng) -> dict[str, float]:
        """One GRPO update (epochs × minibatches); returns the metrics as a dict of device scalars."""
        if self.cfg.grpo.beta and self.state.ref_params is None and "ref_logp" not in batch:
            raise ValueError(f"grpo.beta={self.cfg.grpo.beta:g} needs a reference: a state with ref_params "
                             "(roro_jax.rl.reference) or a batch with ref_logp")
        if self.state.hparams is None:  # a state made without them (init_state(params, tx)): this learner's
            self.state = self.state.replace(hparams=as_hparams(self.hparams))
        self.state, metrics = self._update(self.state, batch, rng)
        return metrics

    def logits(self, features, params=None):
        return self._logits(self.state.params if params is None else params, features)

    def escalate_prob(self, features, params=None):
        return escalate_prob(self.logits(features, params))

    def logp(self, features, actions, params=None):
        return self._logp(self.state.params if params is None else params, features, actions)

    def model(self) -> RouterMLP:
        return nnx.merge(self.graphdef, self.state.params)

    # ------------------------------------------------------------------------------- checkpoints ---
    def save(self, ckpt: Checkpointer, meta: dict | None = None, force: bool = False) -> bool:
        return ckpt.maybe_save(self.step, self.state, meta, force=force)

    def restore(self, ckpt: Checkpointer, step: int | None = None) -> dict:
        state, meta = ckpt.restore(self.state, step)
        self.state = self.with_config_values(jax.tree.map(jnp.asarray, state))
        return meta

    def with_config_values(self, state):
        """``state`` with this learner's hyperparameter values (``grpo.lr``, ``grpo.max_grad_norm`` and
        :func:`~roro_jax.rl.update.router_hparams`): after a restore, the config in effect is what trains
        (a resume with ``checkpoint.allow_config_change`` that changed ``grpo.lr`` uses the new value)."""
        g = self.cfg.grpo
        opt_state = set_hyperparams(state.opt_state, learning_rate=g.lr,
                                    max_grad_norm=g.max_grad_norm if g.max_grad_norm else float("inf"))
        return state.replace(opt_state=opt_state, hparams=as_hparams(self.hparams))


# ----------------------------------------------------------------------------------- training loop ---
def score_trajectories(reward_batch, cfg):
    """Rewards from the registry, then advantages by the registered estimator ``grpo.adv_scale``:
    ``(rewards [N], terms, advantages [N])``."""
    from roro_jax.rl.advantages import advantages
    from roro_jax.rl.rewards import compute_rewards

    g = cfg.grpo
    rewards, terms = compute_rewards(reward_batch, dict(cfg.reward.weights), mode=cfg.reward.combine,
                                     group_size=g.group_size)
    adv = advantages(rewards, g.group_size, estimator=g.adv_scale, eps=g.adv_eps)
    return rewards, terms, adv


def _log_lines_upto(path, update: int) -> list[str]:
    """The metrics log's lines of updates ``<= update``. A torn last line (a crash mid-write, e.g. power
    loss) is dropped with a warning; an undecodable line elsewhere is an error naming it."""
    import json
    import warnings

    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    kept = []
    for i, ln in enumerate(lines):
        try:
            row = json.loads(ln)
            n = int(row["update"])
        except (ValueError, KeyError, TypeError) as e:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: torn last line dropped on resume ({e})", RuntimeWarning, stacklevel=3)
                break
            raise ValueError(f"{path}:{i + 1}: not a metrics record: {e}") from None
        if n <= update:
            kept.append(ln)
    return kept


class _NoLog:
    """The metrics log of a process other than 0 (process 0 writes the shared one)."""

    def write(self, row: dict) -> None:
        pass


def run_training(learner: RouterLearner, collect, cfg, *, resume: bool = True, stop_after: int | None = None,
                 progress: bool = True, desc: str = "router GRPO"):
    """The online GRPO loop shared by every world.

    ``collect(params, key, k) -> (batch, info)`` samples routed trajectories with the current params for
    update ``k`` and returns the padded batch (with ``advantages``) and a dict of scalar diagnostics.
    ``resume=False`` starts over and deletes the checkpoints of an earlier run in the same directory.
    Update ``k`` draws its randomness from ``fold_in(PRNGKey(seed), k)``, so a run resumed from a
    checkpoint at update ``k`` continues exactly as the uninterrupted run would. A corrupt or partial
    newest checkpoint is skipped with a ``CheckpointFallbackWarning`` and set aside (see
    ``roro_jax.rl.checkpoint``); the run resumes from the newest step that verifies.

    The run folder ``out_dir`` holds ``config.yaml`` (the resolved config; resuming with a config that
    differs in a training key is a ``ConfigError`` listing the keys, see :mod:`roro_jax.rl.run_dir`),
    ``checkpoints/`` (after updates ``checkpoint.every``, ``2 * every``, ... and the last one) and
    ``metrics.jsonl``: one line per update with ``time``, ``wall_s``, ``step_s``, ``devices`` and ``mode``
    besides the diagnostics and losses (see :mod:`roro_jax.rl.metrics_log`; TensorBoard too with
    ``logging.tensorboard=true``). Lines after the restored checkpoint are dropped on resume, so the log has
    no duplicates and no gaps; the first line of a resumed run carries ``resumed_from``. A resumed run says
    where it resumed; a finished run says so and prints its last metrics. Returns the history of this call.

    A run that stops on an exception (``collect`` fails: e.g. a server died and the engine's retries are
    spent; Ctrl-C) checkpoints its last completed update before the exception propagates, even between
    ``checkpoint.every`` steps, and warns where it can be resumed: every logged update is on disk, and an
    update cut off part-way is neither applied nor logged (one process only; see :func:`_save_on_failure`).

    With several processes (:mod:`roro_jax.distributed`) every process runs this loop with the same ``cfg``
    and the same ``out_dir`` (on a filesystem all of them see): they share one checkpoint directory, and
    only process 0 writes ``config.yaml``, ``metrics.jsonl`` and TensorBoard events.
    """
    import contextlib
    import json
    import time
    import warnings
    from pathlib import Path

    from tqdm.auto import tqdm

    from roro_jax.rl.metrics_log import MetricsLog
    from roro_jax.rl.run_dir import check_resume_config, save_run_config

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(cfg.checkpoint.dir or out / "checkpoints", cfg.checkpoint.every, cfg.checkpoint.keep)
    start = 0
    if resume and ckpt.latest_step() is not None:
        changes = check_resume_config(cfg, out)  # before restoring: a changed config is the likelier cause
        if changes:
            warnings.warn(f"{out}: resuming with a changed config (checkpoint.allow_config_change): "
                          + "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes), UserWarning, stacklevel=2)
        learner.restore(ckpt)  # newest step that restores; warns about corrupt newer ones
        start = learner.step
        ckpt.set_aside_newer(start)  # so that the resumed run can save those steps again
    elif not resume:
        ckpt.clear()  # a fresh run replaces the old run's checkpoints
    # several processes share out_dir: process 0 writes config.yaml and the metrics log, every process
    # takes part in each checkpoint save and restore (roro_jax.rl.checkpoint)
    primary = distributed.is_primary()
    log_path = out / "metrics.jsonl"
    kept = _log_lines_upto(log_path, start) if primary and start and log_path.exists() else []
    if primary:
        save_run_config(cfg, out)
        log_path.write_text("".join(ln + "\n" for ln in kept))
    if start >= cfg.train.updates:
        last = json.loads(kept[-1]) if kept else {}
        summary = ", ".join(f"{n} {last[n]:.3f}" for n in ("reward", "accuracy", "large_share", "loss") if n in last)
        print(f"{desc}: {out} already finished ({start} of {cfg.train.updates} updates){': ' + summary if summary else ''}"
              f". Raise train.updates to continue, or pass --fresh to start over.")
        ckpt.close()
        return []
    if start:
        print(f"{desc}: resuming {out} after update {start} of {cfg.train.updates} (checkpoint {ckpt.directory / str(start)})")
    key = jax.random.PRNGKey(cfg.seed)
    end = cfg.train.updates if stop_after is None else min(cfg.train.updates, start + stop_after)
    devices = int(learner.mesh.devices.size) if learner.mesh is not None else 1
    history = []
    bar = tqdm(range(start, end), desc=desc, disable=not progress, initial=start, total=cfg.train.updates)
    t_run = time.perf_counter()
    saved = start  # the newest update on disk (or, for start 0, nothing to keep)
    try:
        with MetricsLog(log_path, cfg, start) if primary else contextlib.nullcontext(_NoLog()) as log:
            for k in bar:
                t0 = time.perf_counter()
                kc, ku = jax.random.split(jax.random.fold_in(key, k))
                batch, info = collect(learner.params, kc, k)
                metrics = learner.update(batch, ku)
                row = {"update": k + 1, **{n: float(v) for n, v in {**info, **metrics}.items()}}  # host sync
                now = time.perf_counter()
                row.update(time=time.time(), wall_s=now - t_run, step_s=now - t0, devices=devices,
                           mode=cfg.parallel.mode)
                if k == start and start:
                    row["resumed_from"] = start
                history.append(row)
                log.write(row)
                bar.set_postfix({n: f"{row[n]:.3f}" for n in ("reward", "accuracy", "large_share") if n in row})
                if learner.save(ckpt, {"update": k + 1}, force=(k + 1 == end)):
                    saved = k + 1
    except BaseException:
        _save_on_failure(learner, ckpt, saved, out, desc)
        raise
    ckpt.close()
    return history


def _save_on_failure(learner: RouterLearner, ckpt: Checkpointer, saved: int, out, desc: str) -> None:
    """The run stops on an error (a server that died mid-collection, Ctrl-C, ...): checkpoint the last
    *completed* update if the interval skipped it, so that no logged update is lost, and wait for pending
    saves. The state only changes when an update completes, so it is that update's state; an update cut
    off part-way was neither applied nor logged. One process only: a save is collective, and the other
    processes of a multi-process run are not stopping with this one (they resume from the last periodic
    checkpoint)."""
    import sys
    import warnings

    step = learner.step
    if jax.process_count() > 1:
        return
    try:
        if step > saved:
            learner.save(ckpt, {"update": step}, force=True)
        ckpt.close()
    except Exception as e:  # noqa: BLE001 - the original error is the one to report
        print(f"{desc}: could not checkpoint update {step} while stopping ({type(e).__name__}: {e})",
              file=sys.stderr)
        return
    if step:
        warnings.warn(f"{desc}: stopped during update {step + 1}; updates 1..{step} are checkpointed in {out}: "
                      "rerun the same command to resume", RuntimeWarning, stacklevel=3)
