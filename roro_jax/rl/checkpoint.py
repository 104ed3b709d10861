"""Checkpoints with orbax-checkpoint: save every k updates, keep the last N, atomic, verified, resumable.

The saved item is the whole ``TrainState`` pytree (params, optimiser state, step) plus a small JSON
``meta`` dict (e.g. the config, counters of the data stream).

What is guaranteed:

* A save killed part-way never yields a step that looks valid: orbax writes into
  ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` when complete; the tmp directory is
  ignored by ``latest_step``/``all_steps`` and removed when that step is saved again.
* Every save records a SHA-256 of the meta and of each state leaf's dtype, shape and bytes in the meta
  (key ``_sha256``); :meth:`Checkpointer.restore` recomputes it on what it read. A restored checkpoint is
  therefore bit for bit what was saved. Orbax alone does not promise this: a byte overwritten inside an
  array file restores silently with wrong values, and a target of another dtype is silently cast (a
  target of another shape is refused by orbax). Checkpoints written before the digest existed are
  restored unverified.
* ``restore()`` of the latest step falls back to the newest earlier step that restores and verifies
  when newer ones are corrupt or partial (truncated/overwritten/missing files, a garbled meta, an
  emptied step directory), with one :class:`CheckpointFallbackWarning` per skipped step naming the
  step, the directory and the error. If no step restores it raises :class:`CheckpointRestoreError`
  listing each step's failure. :meth:`Checkpointer.set_aside_newer` then moves the skipped steps out of
  the step sequence (renamed, not deleted) so that training can save those steps again.

Several processes (``jax.distributed``, see :mod:`roro_jax.distributed`) share ONE checkpoint directory,
which must be on a filesystem every process sees. Every process calls :meth:`Checkpointer.maybe_save`
with the same global ``jax.Array`` state; orbax writes each array shard once (the process that holds
its first replica: for the replicated train state that is the primary process, 0), the small JSON meta
is written by the primary process only, and after a barrier over all processes the primary process
commits the step (renames its tmp directory). Every process restores from the same directory, into the
shardings of its own ``target_state``: a checkpoint written by 2 processes x 4 devices restores in
1 process x 8 devices, 1 process x 4 devices, or the reverse, because the saved arrays are global
arrays, independent of the mesh that wrote them. The parameter shapes are also recorded in the meta
(key ``_param_shapes``) so that :func:`saved_param_shapes` reads them as plain JSON, without touching
JAX (a multi-process run must join ``jax.distributed`` before anything initialises a JAX backend;
orbax's metadata readers do initialise one).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from roro_jax.types import InputError

DIGEST_KEY = "_sha256"
SHAPES_KEY = "_param_shapes"
PRIMARY_PROCESS = 0  # writes the meta, commits each step, renames set-aside steps


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint could not be restored; an earlier step was used instead."""


class CheckpointRestoreError(RuntimeError):
    """No checkpoint step in the directory could be restored."""


class CheckpointMismatchError(InputError):
    """The checkpoint's parameters do not have the shapes the current config builds (a user mistake:
    another ``router.hidden`` / feature width in the same ``out_dir``); one line naming the parameter."""


def _name(path) -> str:
    parts = []
    for k in path:
        v = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        if str(v) != "value":  # nnx.Param's inner field
            parts.append(str(v))
    return "/".join(parts)


def param_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"layers/0/kernel": shape, ...}`` for a params pytree (arrays, ``ShapeDtypeStruct``s or orbax
    array metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {_name(p): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


def _saved_meta(directory: str | Path, step: int) -> dict | None:
    """Step ``step``'s JSON meta read as a plain file (orbax's ``JsonSave`` writes ``<step>/meta/metadata``),
    or None when it is missing or unreadable."""
    try:
        data = json.loads((Path(directory) / str(step) / "meta" / "metadata").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def saved_param_shapes(directory: str | Path, step: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes stored in checkpoint ``step``: from the meta's ``_param_shapes`` (plain JSON,
    no JAX backend started), else, for checkpoints written before it existed, orbax's array metadata
    (no arrays read)."""
    shapes = (_saved_meta(directory, step) or {}).get(SHAPES_KEY)
    if isinstance(shapes, dict):
        return {str(k): tuple(int(n) for n in v) for k, v in shapes.items()}
    meta = ocp.StandardCheckpointer().metadata(Path(directory) / str(step) / "state")
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return param_shapes(tree["params"])


def check_param_shapes(directory: str | Path, step: int, target_params: Any, what: str = "the current config"
                       ) -> None:
    """Raise :class:`CheckpointMismatchError` naming the first parameter whose saved shape (or presence)
    differs from ``target_params`` (arrays or ``jax.eval_shape`` structs)."""
    saved, want = saved_param_shapes(directory, step), param_shapes(target_params)
    for name in sorted(set(saved) | set(want)):
        a, b = saved.get(name), want.get(name)
        if a != b:
            head = f"checkpoint step {step} in {directory} does not fit {what}: parameter '{name}' "
            if a is None or b is None:
                body = "exists only under the current config" if a is None else "exists only in the checkpoint"
            else:
                body = f"has shape {a} in the checkpoint but {b} under the current config"
            raise CheckpointMismatchError(head + body + " (router.hidden / router.features / the feature width "
                                          "changed?); pass --fresh to start over in this out_dir (deletes its "
                                          "checkpoints), or use another out_dir")


def state_digest(state: Any, meta: dict) -> str | None:
    """SHA-256 over the meta (canonical JSON) and every leaf's dtype, shape and bytes, in tree order;
    ``None`` when a leaf is sharded over several processes (no process sees all of its bytes)."""
    leaves = jax.tree.leaves(state)
    if any(isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated) for x in leaves):
        return None
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for leaf in jax.device_get(leaves):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _short(e: BaseException, limit: int = 300) -> str:
    """One line for a restore failure: the root cause (orbax wraps TensorStore errors), shortened."""
    while e.__cause__ is not None:
        e = e.__cause__
    msg = " ".join(str(e).split(" [tensorstore_spec")[0].split())
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


class Checkpointer:
    def __init__(self, directory: str | Path, every: int = 1, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.every = max(every, 1)
        # all processes of a run take part in every save and restore, process 0 commits (see module doc)
        multiprocessing = ocp.options.MultiprocessingOptions(primary_host=PRIMARY_PROCESS)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(every, 1), create=True,
                                               multiprocessing_options=multiprocessing)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def maybe_save(self, step: int, state: Any, meta: dict | None = None, force: bool = False) -> bool:
        """Save when ``step`` is a multiple of ``every`` (``every=10``: steps 10, 20, ...; orbax alone also
        saves the first step it sees) or when ``force``; returns whether it saved. With several processes
        every process calls it with the same step and the same global state (see module doc)."""
        if not (force or step % self.every == 0):
            return False
        meta = dict(meta or {})
        params = getattr(state, "params", None)
        if params is not None:
            meta[SHAPES_KEY] = {k: list(v) for k, v in param_shapes(params).items()}
        digest = state_digest(state, meta)
        if digest is not None:
            meta[DIGEST_KEY] = digest
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=True)  # the interval was decided above

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, target_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` into the structure of ``target_state``, verified (see module doc).

        ``step=None``: the newest step that restores, warning about each newer one that does not.
        An explicit ``step`` is restored without fallback (``CheckpointRestoreError`` if it fails).
        """
        steps = sorted(self.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        params = getattr(target_state, "params", None)
        if params is not None:
            try:
                check_param_shapes(self.directory, steps[0], params)
            except CheckpointMismatchError:
                raise
            except Exception:  # noqa: BLE001 - unreadable metadata: a corrupt step, handled by the fallback below
                pass
        failures: list[tuple[int, str]] = []
        for s in steps:
            try:
                state, meta = self._restore_step(target_state, s)
            except Exception as e:  # noqa: BLE001 - any failure to read or verify a step means "try an older one"
                failures.append((s, _short(e)))
                continue
            for bad, err in failures:
                warnings.warn(f"checkpoint step {bad} in {self.directory} cannot be restored ({err}); "
                              f"using step {s} instead", CheckpointFallbackWarning, stacklevel=2)
            return state, meta
        lines = "".join(f"\n  step {s}: {err}" for s, err in failures)
        what = f"no checkpoint in {self.directory} could" if step is None else \
            f"checkpoint step {step} in {self.directory} cannot"
        raise CheckpointRestoreError(f"{what} be restored:{lines}")

    def _restore_step(self, target_state: Any, step: int) -> tuple[Any, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  meta=ocp.args.JsonRestore()))
        state, meta = out["state"], dict(out["meta"] or {})
        digest = meta.pop(DIGEST_KEY, None)
        if digest is not None and digest != state_digest(state, meta):
            raise ValueError(f"checksum mismatch: the values restored from step {step} are not the ones saved "
                             "(corrupt data, or a target whose dtypes differ from the saved ones)")
        meta.pop(SHAPES_KEY, None)
        return state, meta

    def set_aside_newer(self, step: int) -> list[int]:
        """Rename every step newer than ``step`` to ``<step>.unrestorable-<ns>`` (orbax ignores such
        directories), so that a run resumed from ``step`` can save those steps again; returns those steps.
        With several processes every process must call it (the primary one renames, the others wait for it
        at a barrier that does not depend on what each process saw: one that listed the directory after
        the renames sees nothing newer)."""
        newer = sorted(x for x in self.all_steps() if x > step)
        if newer and ocp.multihost.process_index() == PRIMARY_PROCESS:
            for s in newer:
                (self.directory / str(s)).rename(self.directory / f"{s}.unrestorable-{time.time_ns()}")
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"roro_set_aside_newer_{step}")
        if newer or jax.process_count() > 1:
            self.manager.reload()
        return newer

    def clear(self) -> None:
        """Delete every checkpoint (a fresh run in a directory that holds an older run's checkpoints)."""
        for step in self.all_steps():
            self.manager.delete(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

