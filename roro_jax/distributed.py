"""Multi-process (multi-host) training: one JAX process per host, one global ``data`` mesh.

How to run on several hosts
---------------------------
Start the *same* program once per host (``N`` processes in all, normally one per host), each with the
same config except its process id, before anything touches JAX::

    # host 0 (runs the coordinator service, so its address must be reachable from every host)
    RORO_COORDINATOR=10.0.0.1:29500 RORO_NUM_PROCESSES=2 RORO_PROCESS_ID=0 \\
        roro router -c CONFIG parallel.mode=shard_map
    # host 1
    RORO_COORDINATOR=10.0.0.1:29500 RORO_NUM_PROCESSES=2 RORO_PROCESS_ID=1 \\
        roro router -c CONFIG parallel.mode=shard_map

or the config keys ``parallel.coordinator=10.0.0.1:29500 parallel.num_processes=2
parallel.process_id=<i>`` (a key that is set wins over its environment variable). With
``parallel.coordinator=auto`` (or ``RORO_COORDINATOR=auto``) JAX detects all three from the cluster
(Slurm, Open MPI, Kubernetes, Cloud TPU). :class:`~roro_jax.rl.trainer.RouterLearner` calls
:func:`initialize_from_config` itself, so it must be the first thing in the process that uses JAX;
scripts that touch JAX earlier call :func:`initialize_from_config` (or :func:`initialize`) first.

- ``coordinator``: ``host:port`` of process 0; the port must be free there and the same for all.
- ``num_processes``: the number of processes; ``process_id``: ``0 .. num_processes-1``, distinct.
- Every process sees its local devices (GPUs, or CPU devices: on CPU the collectives use Gloo over
  TCP); ``jax.devices()`` then lists the devices of all processes, ordered by process, and
  ``make_mesh()`` builds the 1-D ``data`` mesh over all of them (``parallel.devices`` must be 0 or the
  global device count). Only the ``shard_map`` (primary) and ``jit_sharded`` modes span processes;
  ``single`` and ``pmap`` stay process-local.

What each process must supply (the data contract of ``make_update``'s update function):

- ``batch_contract="global"`` (the default, what :func:`~roro_jax.rl.trainer.run_training` does):
  **every process passes the same, whole batch** (same seed, same params -> the same collected
  batch) and each process copies only the rows its own devices hold; nothing is checked, so a process
  that passes a different batch silently trains on a mixture. A batch that already is a global
  ``jax.Array`` (e.g. the output of a jitted collector run on the global params) is used as is.
- ``batch_contract="local"``: each process passes **its own part** of the batch (``B / N`` rows);
  the global batch is the concatenation of the parts in ``process_id`` order (for the mesh of
  ``make_mesh()``), so ``B`` must still split into the minibatches and devices as in one process.
- The train state and the rng are replicated: every process holds the same values (same seed).
- Outputs (state, metrics) are fully replicated, so every process can read them (``float(m)``,
  ``jax.device_get(state.params)``) and all processes hold identical parameters.

Files: the processes of one run share one ``out_dir`` on a filesystem all of them see. Process 0
(:func:`is_primary`) writes ``config.yaml`` and ``metrics.jsonl``; every process takes part in each
checkpoint save and restore, and process 0 commits each step (:mod:`roro_jax.rl.checkpoint`). A
checkpoint restores on any other process or device count.

A single process (``num_processes`` unset or 1) does nothing here and behaves exactly as before.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Sharding

ENV_COORDINATOR = "RORO_COORDINATOR"
ENV_NUM_PROCESSES = "RORO_NUM_PROCESSES"
ENV_PROCESS_ID = "RORO_PROCESS_ID"
AUTO = "auto"


def settings(parallel=None) -> tuple[str | None, int, int | None]:
    """``(coordinator, num_processes, process_id)`` from ``parallel`` config keys, else the env vars.

    ``num_processes`` defaults to 1; ``coordinator='auto'`` leaves everything unset to JAX's cluster
    auto-detection.
    """
    def pick(attr, env, cast):
        value = getattr(parallel, attr, None) if parallel is not None else None
        if value is None and os.environ.get(env, "").strip():
            try:
                value = cast(os.environ[env].strip())
            except ValueError:
                raise ValueError(f"{env}={os.environ[env]!r} is not valid") from None
        return value

    coordinator = pick("coordinator", ENV_COORDINATOR, str)
    num_processes = pick("num_processes", ENV_NUM_PROCESSES, int)
    process_id = pick("process_id", ENV_PROCESS_ID, int)
    if coordinator == AUTO:
        return AUTO, num_processes or 0, process_id
    return coordinator, 1 if num_processes is None else num_processes, process_id


def is_initialized() -> bool:
    return jax.distributed.is_initialized()


def initialize(coordinator: str | None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout_s: int = 300, cpu_collectives: str | None = "gloo") -> bool:
    """Join (process 0: start) the JAX distributed runtime; returns whether it is now multi-process.

    A thin wrapper over :func:`jax.distributed.initialize` that must run before any JAX computation.
    ``num_processes`` of None or 1 (without ``coordinator='auto'``) is a no-op. Calling it again with
    the same process count is a no-op. ``timeout_s`` bounds the wait for all processes to connect.
    ``cpu_collectives`` selects the cross-process collectives of the CPU backend ('gloo' over TCP;
    GPU/TPU backends use their own and ignore it).
    """
    auto = coordinator == AUTO
    if not auto and (num_processes is None or num_processes <= 1):
        return False
    if is_initialized():
        if not auto and jax.process_count() != num_processes:
            raise RuntimeError(f"JAX distributed is already initialized with {jax.process_count()} "
                               f"processes, not {num_processes}")
        return jax.process_count() > 1
    if not auto:
        if not coordinator:
            raise ValueError(f"{num_processes} processes need a coordinator address host:port "
                             f"(parallel.coordinator or {ENV_COORDINATOR})")
        if process_id is None or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in 0..{num_processes - 1} (parallel.process_id or "
                             f"{ENV_PROCESS_ID}), got {process_id}")
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        if auto:
            jax.distributed.initialize(num_processes=num_processes or None, process_id=process_id,
                                       initialization_timeout=timeout_s)
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id,
                                       cluster_detection_method="deactivate",
                                       initialization_timeout=timeout_s)
    except RuntimeError as e:
        if "before any JAX" in str(e):
            raise RuntimeError("multi-process training: initialize the distributed runtime before anything "
                               "uses JAX (create the RouterLearner first, or call "
                               "roro_jax.distributed.initialize_from_config(cfg.parallel) at the start)") from e
        raise
    return jax.process_count() > 1


def initialize_from_config(parallel, *, timeout_s: int = 300) -> bool:
    """:func:`initialize` from ``cfg.parallel`` (``coordinator``, ``num_processes``, ``process_id``) or
    the ``RORO_*`` environment variables; a no-op for one process."""
    coordinator, num_processes, process_id = settings(parallel)
    return initialize(coordinator, num_processes, process_id, timeout_s=timeout_s)


def is_primary() -> bool:
    """True in process 0, the one that writes a run's shared files (config, metrics log) and commits its
    checkpoints; always True in a single process."""
    return jax.process_index() == 0


def spans_processes(sharding: Sharding) -> bool:
    """True if ``sharding`` includes devices of other processes (so host data must be assembled)."""
    return not sharding.is_fully_addressable


def _leaf_to_global(x, sharding: Sharding, local: bool):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: a no-op or an on-device reshard
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_leaf_to_global(jax.random.key_data(x), sharding, local), impl=impl)
    data = np.asarray(x)
    if local:
        return jax.make_array_from_process_local_data(sharding, data)
    # every process holds the whole array: each device reads its own block of it
    return jax.make_array_from_process_local_data(sharding, data, data.shape)


def to_global(tree: Any, sharding: Sharding, *, local: bool = False) -> Any:
    """Place a pytree of host/process-local arrays on a ``sharding`` that may span processes.

    ``local=False``: every process passes the whole (identical) array. ``local=True``: each process
    passes its own part along the sharded axis (see the module doc). Leaves that already are global
    ``jax.Array`` s are resharded on device. Within one process this is ``jax.device_put``.
    """
    if not spans_processes(sharding):
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _leaf_to_global(x, sharding, local), tree)
