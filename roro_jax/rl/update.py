"""The jitted GRPO update of the router: ``update(state, batch, rng) -> (state, metrics)``.

One XLA program runs ``epochs x minibatches`` optimiser steps inside ``lax.scan`` (minibatches are drawn
by a fresh permutation of the trajectories each epoch), with the state's buffers donated.

Parallel modes (``ParallelConfig.mode``):

- ``single``: one device.
- ``shard_map`` (primary): the batch is sharded over a ``data`` mesh axis; each device computes the
  loss *numerator* of its part of every minibatch, and the numerators, denominators and gradients are
  ``psum``-ed, so the result equals the single-device update up to float reassociation. Minibatches are
  drawn from the global permutation (each device gathers the full batch once per update and takes its
  slice of every minibatch), so the composition of minibatches does not depend on the device count.
- ``pmap``: the same per-device body under ``jax.pmap`` (batch given with a leading device axis).
- ``jit_sharded``: the single-device program under ``jit`` with the batch placed with a
  ``NamedSharding`` over ``data``; XLA's partitioner inserts the collectives.

``shard_map`` and ``jit_sharded`` also run on a mesh that spans several processes (hosts) after
``roro_jax.distributed.initialize``: the update assembles global arrays from what each process passes
(``batch_contract`` "global": every process passes the whole batch; "local": each its own rows) and
returns fully replicated outputs that every process can read. See ``roro_jax/distributed.py``.

A batch is a dict of arrays: ``features`` [B, T, F], ``actions`` [B, T] int, ``old_logp`` [B, T],
``mask`` [B, T], ``advantages`` [B], optional ``ref_logp`` [B, T].

KL to a reference policy (``grpo.beta > 0``): the state carries the reference's parameters
(``TrainState.ref_params``, :mod:`roro_jax.rl.reference`), and each minibatch step computes the reference
log-probs of the taken actions from the same features inside the jitted program; the metrics then hold
``kl_ref``, the token mean of the ``grpo.kl`` estimate. A batch's own ``ref_logp`` is the alternative for a
state without a reference.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from roro_jax import distributed
from roro_jax.rl.losses import aggregate_terms, finalize_terms, policy_loss_terms, safe_div
from roro_jax.router.mlp import action_logp_entropy

DATA = "data"
BATCH_KEYS = ("features", "actions", "old_logp", "mask", "advantages")


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jnp.ndarray
    ref_params: Any = None  # the frozen reference policy of the KL term; None = no reference


def make_optimizer(lr: float, max_grad_norm: float | None = 1.0) -> optax.GradientTransformation:
    chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    return optax.chain(*chain, optax.adam(lr))


def init_state(params, tx, ref_params=None) -> TrainState:
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      ref_params=ref_params)


def policy_logp(graphdef, params, features, actions):
    """``(logp, entropy)`` [B, T] of the taken actions under ``params``."""
    logits = nnx.merge(graphdef, params)(features)
    return action_logp_entropy(logits, actions)


def _shape_error(key: str, x, expected: str) -> ValueError:
    return ValueError(f"batch[{key!r}] has shape {tuple(np.shape(x))}, expected {expected}")


def validate_batch(batch, minibatches: int, n_shards: int = 1) -> None:
    """Check a routing batch before the jitted update; every error names the batch key.

    Shapes: ``features`` [B, T, F], ``actions``/``old_logp``/``mask`` (and ``ref_logp``) [B, T],
    ``advantages`` [B]; ``actions`` of an integer dtype. Host (numpy) inputs are also checked for values,
    since that costs no device sync: actions in {0 (keep), 1 (escalate)}, floats finite. ``B`` must split
    into ``minibatches`` minibatches whose size is a multiple of ``n_shards`` devices.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; needs {list(BATCH_KEYS)} (+ optional ref_logp)")
    actions = batch["actions"]
    if np.ndim(actions) != 2:
        raise _shape_error("actions", actions, "[B, T] (trajectories x routing steps)")
    B, T = np.shape(actions)
    if np.ndim(batch["features"]) != 3 or tuple(np.shape(batch["features"])[:2]) != (B, T):
        raise _shape_error("features", batch["features"], f"[B, T, F] = [{B}, {T}, F] like batch['actions']")
    for k in ("old_logp", "mask", "ref_logp"):
        if k in batch and batch[k] is not None and tuple(np.shape(batch[k])) != (B, T):
            raise _shape_error(k, batch[k], f"[B, T] = [{B}, {T}] like batch['actions']")
    if tuple(np.shape(batch["advantages"])) != (B,):
        raise _shape_error("advantages", batch["advantages"], f"[B] = [{B}] (one per trajectory)")
    dtype = actions.dtype if hasattr(actions, "dtype") else np.asarray(actions).dtype  # never fetch device data
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"batch['actions'] has dtype {dtype}; actions are integers 0 (keep) / 1 (escalate)")
    if isinstance(actions, np.ndarray) and actions.size and not np.isin(actions, (0, 1)).all():
        bad = np.argwhere(~np.isin(actions, (0, 1)))[0].tolist()
        raise ValueError(f"batch['actions'] has {actions[tuple(bad)]} at index {bad}; actions are 0 (keep) or "
                         "1 (escalate)")
    if B % minibatches or (B // minibatches) % n_shards:
        raise ValueError(f"batch of {B} trajectories must split into {minibatches} minibatches whose size is a "
                         f"multiple of the {n_shards} devices")
    for k in ("features", "old_logp", "advantages", "mask", "ref_logp"):
        x = batch.get(k)  # host (numpy) inputs only: checking device arrays would sync the host
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0].tolist()
            raise ValueError(f"batch[{k!r}] has a non-finite value {x[tuple(bad)]} at index {bad}: NaN/inf would "
                             "poison the router's parameters")


def _body(graphdef, tx, loss_kw: dict, epochs: int, minibatches: int, axis_name: str | None, n_shards: int):
    """The per-device update body; with ``axis_name=None`` it is the whole single-device update."""

    def psum(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    def run(state: TrainState, batch, rng):
        ref_params = state.ref_params
        if ref_params is not None and "ref_logp" in batch:
            raise ValueError("the state carries a reference policy (ref_params) and the batch its own ref_logp: "
                             "give one")
        if loss_kw["beta"] and ref_params is None and "ref_logp" not in batch:
            raise ValueError(f"grpo.beta={loss_kw['beta']:g} needs a reference: a state with ref_params "
                             "(roro_jax.rl.reference) or a batch with ref_logp")
        if axis_name is not None:  # every device sees the whole batch; minibatches are global
            batch = jax.tree.map(lambda x: jax.lax.all_gather(x, axis_name, tiled=True), batch)
            shard = jax.lax.axis_index(axis_name)
        B = batch["actions"].shape[0]
        mb = B // minibatches
        local = mb // n_shards

        def minibatch_step(carry, idx):
            params, opt_state = carry
            if axis_name is not None:
                idx = jax.lax.dynamic_slice_in_dim(idx, shard * local, local)
            data = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch)
            # the denominator does not depend on params: reduce it first so the local loss is exact
            _, den = aggregate_terms(data["mask"], data["mask"], loss_kw["agg"])
            den = psum(den)
            ref_logp = data.get("ref_logp")
            if ref_params is not None:  # the frozen reference, on the same features and actions
                ref_logp = jax.lax.stop_gradient(
                    policy_logp(graphdef, ref_params, data["features"], data["actions"])[0])

            def loss_fn(p):
                logp, ent = policy_logp(graphdef, p, data["features"], data["actions"])
                terms = policy_loss_terms(logp, data["old_logp"], data["advantages"], data["mask"],
                                          ref_logp=ref_logp, entropy=ent, **loss_kw)
                return safe_div(terms["loss_sum"], den), terms

            grads, terms = jax.grad(loss_fn, has_aux=True)(params)
            grads, terms = psum(grads), psum(terms)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            _, metrics = finalize_terms(terms)
            if "kl" in metrics:
                metrics["kl_ref"] = metrics.pop("kl")
            metrics["grad_norm"] = optax.tree.norm(grads)
            return (params, opt_state), metrics

        def epoch(carry, key):
            perm = jax.random.permutation(key, B).reshape(minibatches, mb)
            return jax.lax.scan(minibatch_step, carry, perm)

        keys = jax.random.split(rng, epochs)
        (params, opt_state), metrics = jax.lax.scan(epoch, (state.params, state.opt_state), keys)
        metrics = jax.tree.map(jnp.mean, metrics)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return run


def make_update(graphdef, tx, grpo_cfg, *, mode: str = "single", mesh: Mesh | None = None,
                donate: bool = True, batch_contract: str = "global") -> Callable:
    """Build ``update(state, batch, rng) -> (state, metrics)`` for the given parallel ``mode``.

    ``grpo_cfg`` supplies epochs, minibatches, clip_eps, clip_eps_high, beta, kl, agg, entropy_coef.
    For ``shard_map``/``jit_sharded`` pass a 1-D ``mesh`` with axis ``data`` (default: all devices);
    the returned function places the batch itself. For ``pmap`` the batch is split across the devices of
    ``mesh`` (default: ``jax.local_devices()``) by the returned function, and the state stays unreplicated
    for the caller.

    When the mesh spans several processes, ``batch_contract`` says what each process passes:
    ``"global"`` the whole batch (the same on every process), ``"local"`` its own consecutive rows
    (the global batch is the processes' parts concatenated in mesh order); the multi-process update
    also takes ``batch_contract=`` per call. Within one process the batch is always the whole batch.
    """
    if batch_contract not in ("global", "local"):
        raise ValueError(f"batch_contract must be 'global' or 'local', got {batch_contract!r}")
    loss_kw = dict(clip_eps=grpo_cfg.clip_eps, clip_eps_high=grpo_cfg.clip_eps_high, beta=grpo_cfg.beta,
                   kl=grpo_cfg.kl, agg=grpo_cfg.agg, entropy_coef=grpo_cfg.entropy_coef)
    E, K = grpo_cfg.epochs, grpo_cfg.minibatches
    donate_args = (0,) if donate else ()

    if mode == "single":
        fn = jax.jit(_body(graphdef, tx, loss_kw, E, K, None, 1), donate_argnums=donate_args)

        def update(state, batch, rng):
            validate_batch(batch, K)
            return fn(state, batch, rng)

        return update

    if mode in ("shard_map", "jit_sharded"):
        mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), (DATA,))
        n = mesh.shape[DATA]
        batch_sharding = NamedSharding(mesh, P(DATA))
        replicated = NamedSharding(mesh, P())
        if mode == "shard_map":
            body = _body(graphdef, tx, loss_kw, E, K, DATA, n)
            inner = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(DATA), P()), out_specs=(P(), P()),
                                  check_vma=False)
        else:
            inner = _body(graphdef, tx, loss_kw, E, K, None, 1)
        fn = jax.jit(inner, donate_argnums=donate_args, out_shardings=(replicated, replicated))

        if not distributed.spans_processes(batch_sharding):
            def update(state, batch, rng):
                validate_batch(batch, K, n)
                batch = jax.device_put(batch, batch_sharding)
                state = jax.device_put(state, replicated)
                return fn(state, batch, rng)

            return update

        def update(state, batch, rng, *, batch_contract: str = batch_contract):
            # several processes: assemble global arrays; every process runs the same program
            local = batch_contract == "local"
            if not local:
                validate_batch(batch, K, n)
            batch = distributed.to_global(batch, batch_sharding, local=local)
            if local:
                validate_batch(batch, K, n)  # the global batch
            state = distributed.to_global(state, replicated)
            rng = distributed.to_global(rng, replicated)
            return fn(state, batch, rng)

        return update

    if mode == "pmap":
        devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()
        n = len(devices)
        body = _body(graphdef, tx, loss_kw, E, K, DATA, n)
        fn = jax.pmap(body, axis_name=DATA, in_axes=(None, 0, None), out_axes=(None, None),
                      devices=devices, donate_argnums=())
        stacked = NamedSharding(Mesh(np.array(devices), (DATA,)), P(DATA))

        def update(state, batch, rng):
            validate_batch(batch, K, n)
            split = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
            return fn(state, jax.device_put(split, stacked), rng)

        return update

    raise ValueError(f"parallel mode must be single | shard_map | pmap | jit_sharded, got {mode!r}")
