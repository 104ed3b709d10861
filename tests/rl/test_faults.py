"""Training faults: SIGKILL during training and during checkpoint writes, corrupt/partial checkpoints.

The kill tests run the real ``roro router`` CLI (synthetic world, 8 updates, a checkpoint after each,
the last 3 kept) in child processes that really die by SIGKILL, with real orbax checkpoints, then resume
with the same command and compare the final ``TrainState`` (params, optimiser state, step: every leaf,
bit for bit) and the metrics log with an uninterrupted run's. ``fault_child.py`` only adds the test
faults (a slowed update; a self-kill at a chosen point inside orbax's write). The children share a JAX
compilation cache in the test's tmp dir, so only the first one compiles. The damage tests save and
restore through ``Checkpointer`` in this process, one parametrised case per kind of damage."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from roro_jax.rl.checkpoint import CheckpointFallbackWarning, Checkpointer, CheckpointRestoreError

# A failed orbax restore abandons its other read coroutines; Python reports them when they are collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("fault_child.py")
N = 8  # updates per run; a checkpoint after every update, the last 3 kept
ARGS = ["router", "world=synthetic", "synthetic.queries=32", "synthetic.steps=12", "synthetic.features=8",
        "router.hidden=[32,32]", f"train.updates={N}", "checkpoint.every=1", "checkpoint.keep=3"]
TIMEOUT = 300  # s per child; they take seconds, this only stops a hung child from hanging CI


# ------------------------------------------------------------------------------------- helpers ---
@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    for k in ("RORO_TEST_UPDATE_SLEEP", "RORO_TEST_KILL_IN_SAVE", "RORO_COORDINATOR", "RORO_NUM_PROCESSES",
              "RORO_PROCESS_ID"):  # one plain process per child
        env.pop(k, None)
    return env


def start(out: Path, env: dict, **faults) -> subprocess.Popen:
    """``roro router ARGS out_dir=out`` in a child process (through fault_child.py when faults are given)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(CHILD)] if faults else [sys.executable, "-m", "roro_jax.cli"]
    log = open(out / f"stderr.{time.time_ns()}.log", "w")
    p = subprocess.Popen([*cmd, *ARGS, f"out_dir={out}"], cwd=ROOT, env={**env, **faults}, stdout=log,
                         stderr=subprocess.STDOUT)
    p.log_path = Path(log.name)
    log.close()
    return p


def finish(p: subprocess.Popen) -> tuple[int, str]:
    try:
        rc = p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    return rc, p.log_path.read_text()


def run(out: Path, env: dict, **faults) -> tuple[int, str]:
    return finish(start(out, env, **faults))


def steps_on_disk(out: Path) -> list[int]:
    ck = out / "checkpoints"
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.exists() else []


def logged_updates(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(ln)["update"] for ln in path.read_text().splitlines()] if path.exists() else []


def saved_state(out: Path, step: int = N) -> list[np.ndarray]:
    """Every leaf of the TrainState saved at ``step``, read with plain orbax (not the code under test)."""
    tree = ocp.StandardCheckpointer().restore(out / "checkpoints" / str(step) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_same_state(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, child_env):
    """An uninterrupted run: its final state and its metrics log."""
    out = tmp_path_factory.mktemp("reference")
    rc, log = run(out, child_env)
    assert rc == 0, log
    assert logged_updates(out) == list(range(1, N + 1))
    return out, saved_state(out)


# ----------------------------------------------------------------------------- SIGKILL tests ---
@pytest.mark.slow
def test_sigkill_during_training_then_resume(reference, child_env, tmp_path):
    _, ref_state = reference
    out = tmp_path / "run"
    p = start(out, child_env, RORO_TEST_UPDATE_SLEEP="0.5")  # >= 2 s left to kill it in
    deadline = time.monotonic() + TIMEOUT
    while not (len(logged_updates(out)) >= 3 and steps_on_disk(out)):
        assert p.poll() is None, f"the run ended before it could be killed:\n{p.log_path.read_text()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    rc, _ = finish(p)
    assert rc == -signal.SIGKILL
    killed_at, ckpts = logged_updates(out), steps_on_disk(out)
    assert 3 <= len(killed_at) < N and ckpts, (killed_at, ckpts)  # really killed mid-run

    rc, log = run(out, child_env)
    assert rc == 0, log
    assert "CheckpointFallbackWarning" not in log  # every finalized step is complete
    assert logged_updates(out) == list(range(1, N + 1))  # each update exactly once
    assert_same_state(saved_state(out), ref_state)
    print(f"killed after update {killed_at[-1]} with checkpoints {ckpts}; resumed to {N}: bit-identical")


@pytest.mark.slow
def test_sigkill_inside_checkpoint_writes_and_a_corrupt_checkpoint_then_resume(reference, child_env, tmp_path):
    """Process 1 dies inside the write of step 3 (arrays written, nothing committed); process 2 resumes from
    step 2 and dies committing step 5 (every file written, not renamed); then the newest complete step (4)
    is truncated on disk; process 3 warns about step 4, resumes from step 3 and ends as the uninterrupted run."""
    _, ref_state = reference
    out, ck = tmp_path / "run", tmp_path / "run" / "checkpoints"
    rc, log = run(out, child_env, RORO_TEST_KILL_IN_SAVE="3:arrays")
    assert rc == -signal.SIGKILL, log
    assert steps_on_disk(out) == [1, 2] and (ck / "3.orbax-checkpoint-tmp").is_dir()
    left = sorted(str(p.relative_to(ck)) for p in (ck / "3.orbax-checkpoint-tmp").rglob("*") if p.is_file())
    assert not any(n.endswith("_METADATA") and "state" in n for n in left)  # died before the tree metadata
    probe = Checkpointer(ck)
    assert probe.latest_step() == 2  # orbax does not offer the partial step
    probe.close()

    rc, log = run(out, child_env, RORO_TEST_KILL_IN_SAVE="5:commit")
    assert rc == -signal.SIGKILL, log
    assert "CheckpointFallbackWarning" not in log  # a tmp dir is not a candidate step: nothing was skipped
    assert steps_on_disk(out) == [2, 3, 4] and (ck / "5.orbax-checkpoint-tmp" / "state").is_dir()
    assert not (ck / "3.orbax-checkpoint-tmp").exists()  # orbax replaced it when step 3 was saved again

    for bad in _array_files(ck / "4"):  # every data file: which one holds the params varies between runs
        os.truncate(bad, bad.stat().st_size // 2)
    rc, log = run(out, child_env)
    assert rc == 0, log
    assert log.count("CheckpointFallbackWarning") == 1
    assert f"CheckpointFallbackWarning: checkpoint step 4 in {ck} cannot be restored" in log
    assert "using step 3 instead" in log
    assert logged_updates(out) == list(range(1, N + 1))  # each update exactly once
    assert_same_state(saved_state(out), ref_state)
    assert not list(ck.glob("*.orbax-checkpoint-tmp*"))  # orbax removed tmp 5 when it saved step 5
    assert len(list(ck.glob("4.unrestorable-*"))) == 1  # the bad step is set aside, kept for inspection
    print("left on disk by a kill after the array writes of step 3:", left)


# ------------------------------------------------------------------ corrupt checkpoints, in-process ---
def _state(step: int) -> dict:
    return {"w": jnp.arange(600, dtype=jnp.float32).reshape(20, 30) * step + 0.5,
            "b": jnp.full((7,), step, jnp.bfloat16), "step": jnp.int32(step)}


def _array_files(step_dir: Path) -> list[Path]:
    """Every array data file of a step (OCDBT data under state/)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no OCDBT data files under {step_dir}"
    return files


def _array_file(step_dir: Path) -> Path:
    """The largest array data file of a step (OCDBT data under state/)."""
    return max(_array_files(step_dir), key=lambda p: p.stat().st_size)


def _flip_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def _empty(d: Path) -> None:
    for p in d.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


DAMAGE = {
    "truncated_array_file": lambda d: os.truncate(_array_file(d), _array_file(d).stat().st_size // 2),
    "overwritten_byte_in_array_file": lambda d: _flip_byte(_array_file(d)),  # orbax restores this silently
    "deleted_array_file": lambda d: _array_file(d).unlink(),
    "deleted_ocdbt_manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "garbled_meta_json": lambda d: (d / "meta" / "metadata").write_text('{"upd'),
    "missing_state_item": lambda d: shutil.rmtree(d / "state"),
    "emptied_step_dir": _empty,
}
HARMLESS = {  # orbax reads the step without these; the checksum confirms the values are exact
    "deleted_step_metadata": lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
    "deleted_tree_metadata": lambda d: (d / "state" / "_METADATA").unlink(),
}


@pytest.fixture
def three_steps(tmp_path):
    ck = Checkpointer(tmp_path / "ckpt", every=1, keep=5)
    for s in (1, 2, 3):
        assert ck.maybe_save(s, _state(s), {"update": s})
    ck.close()
    return tmp_path / "ckpt"


def _restore_once(directory: Path):
    ck = Checkpointer(directory)
    try:
        return ck.restore(_state(0))
    finally:
        ck.close()


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) and x.dtype == y.dtype
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("damage", DAMAGE)
def test_corrupt_latest_checkpoint_falls_back_with_warning(three_steps, damage):
    DAMAGE[damage](three_steps / "3")
    ck = Checkpointer(three_steps)
    assert ck.latest_step() == 3  # orbax still lists the damaged step
    expected = rf"checkpoint step 3 in {re.escape(str(three_steps))} cannot be restored \(.+\); using step 2"
    with pytest.warns(CheckpointFallbackWarning, match=expected):
        state, meta = ck.restore(_state(0))
    assert _equal(state, _state(2)) and meta == {"update": 2}
    # set the bad step aside: step 3 can be saved again and is then the one restored
    assert ck.set_aside_newer(2) == [3] and len(list(three_steps.glob("3.unrestorable-*"))) == 1
    assert ck.latest_step() == 2 and ck.maybe_save(3, _state(33), {"update": 3}, force=True)
    ck.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointFallbackWarning)
        state, meta = ck.restore(_state(0))
    assert _equal(state, _state(33)) and meta == {"update": 3}
    ck.close()


@pytest.mark.parametrize("damage", HARMLESS)
def test_missing_metadata_files_still_restore_exactly(three_steps, damage):
    HARMLESS[damage](three_steps / "3")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointFallbackWarning)
        state, meta = _restore_once(three_steps)
    assert _equal(state, _state(3)) and meta == {"update": 3}


def test_two_corrupt_steps_warn_twice(three_steps):
    DAMAGE["truncated_array_file"](three_steps / "3")
    DAMAGE["garbled_meta_json"](three_steps / "2")
    with pytest.warns(CheckpointFallbackWarning) as record:
        state, meta = _restore_once(three_steps)
    msgs = [str(w.message) for w in record if w.category is CheckpointFallbackWarning]
    assert [m.split(" in ")[0] for m in msgs] == ["checkpoint step 3", "checkpoint step 2"]
    assert _equal(state, _state(1)) and meta == {"update": 1}


def test_all_corrupt_is_a_clear_error(three_steps):
    for s, damage in zip((1, 2, 3), ("deleted_array_file", "overwritten_byte_in_array_file", "emptied_step_dir")):
        DAMAGE[damage](three_steps / str(s))
    ck = Checkpointer(three_steps)
    with pytest.raises(CheckpointRestoreError) as err:
        ck.restore(_state(0))
    msg = str(err.value)
    assert str(three_steps) in msg and all(f"step {s}:" in msg for s in (1, 2, 3))
    assert "checksum mismatch" in msg
    with pytest.raises(CheckpointRestoreError, match="step 3:"):  # an explicit step never falls back
        ck.restore(_state(0), step=3)
    ck.close()


def test_restore_refuses_other_shapes_and_dtypes(three_steps):
    """A target that does not match what was saved is an error, not a silent reshape or cast."""
    ck = Checkpointer(three_steps)
    with pytest.raises(CheckpointRestoreError, match=r"step 3:.*stored shape"):
        ck.restore({**_state(0), "w": jnp.zeros((30, 20), jnp.float32)}, step=3)
    with pytest.raises(CheckpointRestoreError, match=r"step 3:.*checksum mismatch"):
        ck.restore({**_state(0), "w": jnp.zeros((20, 30), jnp.bfloat16)}, step=3)
    ck.close()
