"""One generic jitted update, optax / PureJaxRL style, and the router's GRPO update as an instance of it.

:func:`make_update` turns a loss into ``update(state, batch, rng, consts=None) -> (state, metrics)``:

    update = make_update(loss_terms_fn, tx, epochs=4, minibatches=2, mode="shard_map")

``loss_terms_fn(params, minibatch, rng) -> {"loss_sum", "loss_den", ...}`` returns the loss in *additive*
form: ``loss = loss_sum / loss_den``, both sums over the minibatch's rows, ``loss_den`` independent of the
parameters (a token count, a sum of weights). Every other ``*_sum`` entry is a metric summed the same way.
Additive pieces are what keeps data parallelism exact: each device sums its rows and the sums, the
denominators and the gradients are ``psum``-ed, so a sharded update equals the single-device one up to float
reassociation. The router's GRPO loss (:func:`router_loss_terms`), the Judge's Bradley–Terry loss
(:func:`roro_jax.rubric.judge.judge_loss_terms`) and the Rubricor's policy and SFT losses are instances.

``minibatch`` holds the minibatch's rows of every ``batch`` entry (each leaf of ``batch`` has the row axis
first), plus, when present, ``minibatch["hparams"]`` (``state.hparams``: hyperparameters as data, e.g. the
clip range or the KL weight, so changing them does not recompile), ``minibatch["ref_params"]``
(``state.ref_params``: a frozen reference policy) and ``minibatch["consts"]`` (the ``consts`` argument:
replicated inputs that are not trained, e.g. a frozen backbone). ``rng`` is a fresh key per optimiser step,
the same on every device. The optimiser's hyperparameters live in its state
(:func:`make_optimizer` uses ``optax.inject_hyperparams``), so learners that differ only in values share
one compiled update.

One XLA program runs ``epochs x minibatches`` optimiser steps inside ``lax.scan`` (minibatches are drawn by a
fresh permutation of the rows each epoch; one minibatch is the whole batch in order), with the state's
buffers donated. ``metrics`` are the mean over the steps of ``metrics_fn(psum-ed terms)`` (default
:func:`default_metrics`) plus ``grad_norm``.

Parallel modes:

- ``single``: one device.
- ``shard_map`` (primary): the batch is sharded over a ``data`` mesh axis; each device computes the sums of
  its part of every minibatch, and they and the gradients are ``psum``-ed. Minibatches are drawn from the
  global permutation (each device gathers the full batch once per update and takes its slice of every
  minibatch), so the composition of minibatches does not depend on the device count.
- ``pmap``: the same per-device body under ``jax.pmap`` (the batch split over the devices by the update).
- ``jit_sharded``: the single-device program under ``jit`` with the batch placed with a ``NamedSharding``
  over ``data``; XLA's partitioner inserts the collectives.

``shard_map`` and ``jit_sharded`` also run on a mesh that spans several processes (hosts) after
``roro_jax.distributed.initialize``: the update assembles global arrays from what each process passes
(``batch_contract`` "global": every process passes the whole batch; "local": each its own rows) and
returns fully replicated outputs that every process can read. See ``roro_jax/distributed.py``.

The router (:func:`make_router_update`): a batch is a dict of arrays: ``features`` [B, T, F], ``actions``
[B, T] int, ``old_logp`` [B, T], ``mask`` [B, T], ``advantages`` [B], optional ``ref_logp`` [B, T]. The
policy loss is a registered name (``grpo.loss``, :data:`roro_jax.rl.losses.POLICY_LOSSES`); its numeric
hyperparameters (``clip_eps``, ``clip_eps_high``, ``beta``, ``entropy_coef``) ride in ``state.hparams``
(:func:`router_hparams`), the learning rate in the optimiser state.

KL to a reference policy (``grpo.beta > 0``): the state carries the reference's parameters
(``TrainState.ref_params``, :mod:`roro_jax.rl.reference`), and each minibatch step computes the reference
log-probs of the taken actions from the same features inside the jitted program; the metrics then hold
``kl_ref``, the token mean of the ``grpo.kl`` estimate. A batch's own ``ref_logp`` is the alternative for a
state without a reference.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from roro_jax import distributed
from roro_jax.rl.losses import POLICY_LOSSES, finalize_terms, safe_div
from roro_jax.router.mlp import action_logp_entropy

DATA = "data"
MODES = ("single", "shard_map", "pmap", "jit_sharded")
SHARED = ("hparams", "ref_params", "consts")  # minibatch keys the update adds; a batch may not use them
BATCH_KEYS = ("features", "actions", "old_logp", "mask", "advantages")
ROUTER_HPARAMS = ("clip_eps", "clip_eps_high", "beta", "entropy_coef")


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jnp.ndarray
    ref_params: Any = None  # the frozen reference policy of the KL term; None = no reference
    hparams: Any = None  # hyperparameters as data (a dict of scalars the loss reads); None = none


def _adam(learning_rate, max_grad_norm):
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate))


def make_optimizer(lr, max_grad_norm: float | None = 1.0) -> optax.GradientTransformation:
    """Adam after global-norm clipping, with both values in the optimiser state
    (``optax.inject_hyperparams``): optimisers that differ only in ``lr`` / ``max_grad_norm`` share one
    compiled update. ``lr`` is a number or an optax schedule; ``max_grad_norm`` 0 / None = no clipping."""
    return optax.inject_hyperparams(_adam)(learning_rate=lr,
                                          max_grad_norm=float(max_grad_norm) if max_grad_norm else float("inf"))


def set_hyperparams(opt_state, **values):
    """``opt_state`` of an ``optax.inject_hyperparams`` optimiser with ``values`` (e.g. ``learning_rate``)
    replacing the ones it carries (same dtypes: nothing recompiles)."""
    hp = dict(opt_state.hyperparams)
    for k, v in values.items():
        if k not in hp:
            raise KeyError(f"the optimiser has no hyperparameter {k!r}; it has {sorted(hp)}")
        hp[k] = jnp.asarray(v, jnp.asarray(hp[k]).dtype)
    return opt_state._replace(hyperparams=hp)


def as_hparams(values: Mapping[str, float] | None):
    """``{name: float32 scalar}`` for ``TrainState.hparams`` (None stays None)."""
    return None if values is None else {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def init_state(params, tx, ref_params=None, hparams: Mapping[str, float] | None = None) -> TrainState:
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      ref_params=ref_params, hparams=as_hparams(hparams))


def default_metrics(terms) -> dict:
    """``loss = loss_sum / loss_den`` and every other ``name_sum`` as ``name = name_sum / loss_den``."""
    out = {"loss": safe_div(terms["loss_sum"], terms["loss_den"])}
    for k, v in terms.items():
        if k.endswith("_sum") and k != "loss_sum":
            out[k[:-4]] = safe_div(v, terms["loss_den"])
    return out


def _rows(batch) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("the batch is empty")
    return int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else 0


def check_rows(batch, minibatches: int, n_shards: int = 1) -> None:
    """Every leaf of ``batch`` has the same leading (row) axis ``B``, which splits into ``minibatches``
    minibatches whose size is a multiple of ``n_shards`` devices; no key is one the update adds."""
    if isinstance(batch, Mapping):
        clash = [k for k in SHARED if k in batch]
        if clash:
            raise ValueError(f"batch keys {clash} are reserved for what the update adds to each minibatch")
    B = _rows(batch)
    for path, x in jax.tree_util.tree_leaves_with_path(batch):
        if not np.ndim(x) or np.shape(x)[0] != B:
            raise ValueError(f"batch{jax.tree_util.keystr(path)} has shape {tuple(np.shape(x))}; every entry has "
                             f"the rows first ({B} rows like the first entry)")
    if B == 0 or B % minibatches or (B // minibatches) % n_shards:
        raise ValueError(f"batch of {B} rows must split into {minibatches} minibatches whose size is a "
                         f"multiple of the {n_shards} devices")


def _body(loss_terms_fn, tx, metrics_fn, epochs: int, minibatches: int, axis_name: str | None, n_shards: int):
    """The per-device update body; with ``axis_name=None`` it is the whole single-device update."""

    def psum(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    def generic_update(state: TrainState, batch, rng, consts):
        if axis_name is not None:  # every device sees the whole batch; minibatches are global
            batch = jax.tree.map(lambda x: jax.lax.all_gather(x, axis_name, tiled=True), batch)
            shard = jax.lax.axis_index(axis_name)
        B = jax.tree.leaves(batch)[0].shape[0]
        mb = B // minibatches
        local = mb // n_shards
        shared = {k: v for k, v in (("hparams", state.hparams), ("ref_params", state.ref_params),
                                    ("consts", consts)) if v is not None}

        def minibatch_step(carry, xs):
            params, opt_state = carry
            idx, key = xs
            if axis_name is not None:
                idx = jax.lax.dynamic_slice_in_dim(idx, shard * local, local)
            data = {**jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch), **shared}

            def loss_sum(p):
                terms = loss_terms_fn(p, data, key)
                return terms["loss_sum"], terms

            grads, terms = jax.grad(loss_sum, has_aux=True)(params)
            grads, terms = psum(grads), psum(terms)
            # loss_den does not depend on the parameters: d(sum / den) = d(sum) / den, exact over devices
            grads = jax.tree.map(lambda g: safe_div(g, terms["loss_den"]).astype(g.dtype), grads)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            metrics = dict(metrics_fn(terms))
            metrics["grad_norm"] = optax.tree.norm(grads)
            return (params, opt_state), metrics

        def epoch(carry, key):
            kp, kl = jax.random.split(key)
            order = jnp.arange(B) if minibatches == 1 else jax.random.permutation(kp, B)
            return jax.lax.scan(minibatch_step, carry,
                                (order.reshape(minibatches, mb), jax.random.split(kl, minibatches)))

        keys = jax.random.split(rng, epochs)
        (params, opt_state), metrics = jax.lax.scan(epoch, (state.params, state.opt_state), keys)
        metrics = jax.tree.map(jnp.mean, metrics)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return generic_update


def make_update(loss_terms_fn: Callable, tx: optax.GradientTransformation, *, epochs: int = 1,
                minibatches: int = 1, mode: str = "single", mesh: Mesh | None = None, donate: bool = True,
                batch_contract: str = "global", metrics_fn: Callable | None = None,
                validate: Callable | None = None) -> Callable:
    """Build ``update(state, batch, rng, consts=None) -> (state, metrics)`` (see the module docstring).

    For ``shard_map``/``jit_sharded`` pass a 1-D ``mesh`` with axis ``data`` (default: all devices); the
    returned function places the batch itself. For ``pmap`` the batch is split across the devices of
    ``mesh`` (default: ``jax.local_devices()``) by the returned function, and the state stays unreplicated
    for the caller. ``validate(batch, n_shards)`` runs on the host before every call (after the row check).

    When the mesh spans several processes, ``batch_contract`` says what each process passes: ``"global"``
    the whole batch (the same on every process), ``"local"`` its own consecutive rows (the global batch is
    the processes' parts concatenated in mesh order); the multi-process update also takes
    ``batch_contract=`` per call. Within one process the batch is always the whole batch.
    """
    if batch_contract not in ("global", "local"):
        raise ValueError(f"batch_contract must be 'global' or 'local', got {batch_contract!r}")
    if mode not in MODES:
        raise ValueError(f"parallel mode must be single | shard_map | pmap | jit_sharded, got {mode!r}")
    metrics_fn = metrics_fn or default_metrics
    E, K = int(epochs), int(minibatches)
    donate_args = (0,) if donate else ()

    def check(batch, n):
        check_rows(batch, K, n)
        if validate is not None:
            validate(batch, n)

    if mode == "single":
        fn = jax.jit(_body(loss_terms_fn, tx, metrics_fn, E, K, None, 1), donate_argnums=donate_args)

        def update(state, batch, rng, consts=None):
            check(batch, 1)
            return fn(state, batch, rng, consts)

        return update

    if mode in ("shard_map", "jit_sharded"):
        mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), (DATA,))
        n = mesh.shape[DATA]
        batch_sharding = NamedSharding(mesh, P(DATA))
        replicated = NamedSharding(mesh, P())
        if mode == "shard_map":
            inner = jax.shard_map(_body(loss_terms_fn, tx, metrics_fn, E, K, DATA, n), mesh=mesh,
                                  in_specs=(P(), P(DATA), P(), P()), out_specs=(P(), P()), check_vma=False)
        else:
            inner = _body(loss_terms_fn, tx, metrics_fn, E, K, None, 1)
        fn = jax.jit(inner, donate_argnums=donate_args, out_shardings=(replicated, replicated))

        if not distributed.spans_processes(batch_sharding):
            def update(state, batch, rng, consts=None):
                check(batch, n)
                batch = jax.device_put(batch, batch_sharding)
                state, consts = jax.device_put((state, consts), replicated)
                return fn(state, batch, rng, consts)

            return update

        def update(state, batch, rng, consts=None, *, batch_contract: str = batch_contract):
            # several processes: assemble global arrays; every process runs the same program
            local = batch_contract == "local"
            if not local:
                check(batch, n)
            batch = distributed.to_global(batch, batch_sharding, local=local)
            if local:
                check(batch, n)  # the global batch
            state, consts, rng = distributed.to_global((state, consts, rng), replicated)
            return fn(state, batch, rng, consts)

        return update

    devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()
    n = len(devices)
    fn = jax.pmap(_body(loss_terms_fn, tx, metrics_fn, E, K, DATA, n), axis_name=DATA,
                  in_axes=(None, 0, None, None), out_axes=(None, None), devices=devices, donate_argnums=())
    stacked = NamedSharding(Mesh(np.array(devices), (DATA,)), P(DATA))

    def update(state, batch, rng, consts=None):
        check(batch, n)
        split = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
        return fn(state, jax.device_put(split, stacked), rng, consts)

    return update


# ------------------------------------------------------------------------------------------ router ---
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


def router_hparams(grpo_cfg) -> dict[str, float]:
    """The router loss's numeric hyperparameters, carried in ``TrainState.hparams`` (data, not constants)."""
    hi = grpo_cfg.clip_eps if grpo_cfg.clip_eps_high is None else grpo_cfg.clip_eps_high
    return {"clip_eps": float(grpo_cfg.clip_eps), "clip_eps_high": float(hi), "beta": float(grpo_cfg.beta),
            "entropy_coef": float(grpo_cfg.entropy_coef)}


def router_loss_terms(graphdef, policy_loss: str | Callable = "grpo", *, agg: str = "token-mean",
                      kl: str = "k3") -> Callable:
    """The router's ``loss_terms_fn(params, minibatch, rng)``: the registered policy loss ``policy_loss``
    (a name in :data:`~roro_jax.rl.losses.POLICY_LOSSES`, or the function itself) on the log-probs of the
    taken actions; ``minibatch["hparams"]`` supplies its numbers, ``agg`` and ``kl`` (names) are static."""
    loss = POLICY_LOSSES.get(policy_loss) if isinstance(policy_loss, str) else policy_loss

    def terms(params, mb, rng):
        logp, ent = policy_logp(graphdef, params, mb["features"], mb["actions"])
        inputs = {"old_logp": mb["old_logp"], "mask": mb["mask"], "advantages": mb["advantages"], "entropy": ent}
        if "ref_params" in mb:  # the frozen reference, on the same features and actions
            inputs["ref_logp"] = jax.lax.stop_gradient(
                policy_logp(graphdef, mb["ref_params"], mb["features"], mb["actions"])[0])
        elif "ref_logp" in mb:
            inputs["ref_logp"] = mb["ref_logp"]
        return loss(logp, inputs, {**mb.get("hparams", {}), "agg": agg, "kl": kl})

    return terms


def router_metrics(terms) -> dict:
    _, metrics = finalize_terms(terms)
    if "kl" in metrics:
        metrics["kl_ref"] = metrics.pop("kl")
    return metrics


def make_router_update(graphdef, tx, grpo_cfg, *, mode: str = "single", mesh: Mesh | None = None,
                       donate: bool = True, batch_contract: str = "global",
                       policy_loss: str | Callable | None = None) -> Callable:
    """The router's GRPO update ``update(state, batch, rng) -> (state, metrics)``: :func:`make_update` of
    :func:`router_loss_terms` with ``grpo_cfg``'s epochs, minibatches, ``loss`` (or ``policy_loss``), ``agg``
    and ``kl``. Its numbers (clip range, ``beta``, entropy coefficient) come from ``state.hparams``; a state
    without them (``hparams=None``) gets :func:`router_hparams` of ``grpo_cfg``."""
    name = policy_loss if policy_loss is not None else getattr(grpo_cfg, "loss", "grpo")
    K = grpo_cfg.minibatches
    default_hp = router_hparams(grpo_cfg)
    inner = make_update(router_loss_terms(graphdef, name, agg=grpo_cfg.agg, kl=grpo_cfg.kl), tx,
                        epochs=grpo_cfg.epochs, minibatches=K, mode=mode, mesh=mesh, donate=donate,
                        batch_contract=batch_contract, metrics_fn=router_metrics,
                        validate=lambda b, n: validate_batch(b, K, n))

    def update(state, batch, rng, **kw):
        if state.ref_params is not None and "ref_logp" in batch:
            raise ValueError("the state carries a reference policy (ref_params) and the batch its own ref_logp: "
                             "give one")
        if state.hparams is None:
            if default_hp["beta"] and state.ref_params is None and "ref_logp" not in batch:
                raise ValueError(f"grpo.beta={default_hp['beta']:g} needs a reference: a state with ref_params "
                                 "(roro_jax.rl.reference) or a batch with ref_logp")
            state = state.replace(hparams=as_hparams(default_hp))
        return inner(state, batch, rng, **kw)

    return update
