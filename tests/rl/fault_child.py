"""Test scaffolding for tests/rl/test_faults.py: ``python fault_child.py router key=value ...`` runs the
real ``roro`` CLI in this process, after installing the faults named by environment variables:

``RORO_TEST_UPDATE_SLEEP=<seconds>``
    sleep before each GRPO update (the computation is unchanged), so that a parent's SIGKILL lands
    while training is under way rather than after it finished.
``RORO_TEST_KILL_IN_SAVE=<step>:arrays``
    SIGKILL this process while orbax writes checkpoint ``<step>``: after the state's array data is on
    disk, before its tree metadata, the OCDBT merge and the commit (renaming of the tmp directory).
``RORO_TEST_KILL_IN_SAVE=<step>:commit``
    SIGKILL this process when every file of checkpoint ``<step>`` is written, just before orbax renames
    ``<step>.orbax-checkpoint-tmp`` to ``<step>``.

The kill hooks wrap orbax internals (orbax-checkpoint 0.12.x); if they no longer fire, the test sees
the process exit normally instead of by SIGKILL and fails.
"""

import asyncio
import os
import signal
import sys
import time


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _install_sleep(seconds: float) -> None:
    from roro_jax.rl.trainer import RouterLearner

    update = RouterLearner.update

    def slow_update(self, batch, rng):
        time.sleep(seconds)
        return update(self, batch, rng)

    RouterLearner.update = slow_update


def _install_kill(step: str, point: str) -> None:
    import jax
    from orbax.checkpoint._src.handlers.base_pytree_checkpoint_handler import BasePyTreeCheckpointHandler
    from orbax.checkpoint._src.path.atomicity import AtomicRenameTemporaryPath

    tmp_name = f"{step}.orbax-checkpoint-tmp"
    if point == "arrays":
        write_metadata = BasePyTreeCheckpointHandler._write_metadata_after_commits

        async def hooked(self, commit_futures, **kw):
            for f in commit_futures:  # the array data of this item is written
                await asyncio.to_thread(f.result)
            infos = jax.tree.leaves(kw["param_infos"])
            await asyncio.gather(*[i.await_path_creation() for i in infos])
            if infos[0].parent_dir.parent.name.startswith(tmp_name):
                _die()
            return await write_metadata(self, commit_futures, **kw)

        BasePyTreeCheckpointHandler._write_metadata_after_commits = hooked
    elif point == "commit":
        finalize = AtomicRenameTemporaryPath.finalize

        async def hooked(self):
            if self.get_final().name == step:
                _die()
            return await finalize(self)

        AtomicRenameTemporaryPath.finalize = hooked
    else:
        raise ValueError(f"RORO_TEST_KILL_IN_SAVE: unknown point {point!r}")


if __name__ == "__main__":
    if os.environ.get("RORO_TEST_UPDATE_SLEEP"):
        _install_sleep(float(os.environ["RORO_TEST_UPDATE_SLEEP"]))
    if os.environ.get("RORO_TEST_KILL_IN_SAVE"):
        _install_kill(*os.environ["RORO_TEST_KILL_IN_SAVE"].split(":"))
    from roro_jax.cli import main

    sys.exit(main(sys.argv[1:]))
