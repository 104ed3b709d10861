"""Checkpoints with orbax-checkpoint: save every k updates, keep the last N, atomic, resumable.

The saved item is the whole ``TrainState`` pytree (params, optimiser state, step) plus a small JSON
``meta`` dict (e.g. the config, counters of the data stream). Orbax writes to a temporary directory and
renames it when complete, so a run killed mid-save never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, every: int = 1, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(every, 1), create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def maybe_save(self, step: int, state: Any, meta: dict | None = None, force: bool = False) -> bool:
        """Save when ``step`` is on the interval (or ``force``); returns whether it saved."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
        return self.manager.save(step, args=args, force=force)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, target_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` at ``step`` (default latest) into the structure of ``target_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"] or {})

    def clear(self) -> None:
        """Delete every checkpoint (a fresh run in a directory that holds an older run's checkpoints)."""
        for step in self.all_steps():
            self.manager.delete(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
