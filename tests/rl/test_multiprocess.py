"""Multi-process training: 2 JAX processes x 4 CPU devices train the router as 1 process x 8 devices.

Real processes: each worker (tests/rl/multiprocess_worker.py) joins ``jax.distributed`` through a
coordinator on a free loopback port (``parallel.coordinator`` etc., so ``RouterLearner`` initialises the
runtime itself), and the ``shard_map`` update's psum/all_gather cross the processes over Gloo (TCP).
The single-process reference runs here, in the test process, which has 8 simulated CPU devices.

``test_shared_checkpoints_survive_a_kill_and_restore_on_other_device_counts`` runs the real ``roro router``
CLI in both processes (through ``fault_child.py``, which only slows each update so that a kill lands
mid-run) with one shared ``out_dir``: it SIGKILLs process 1 after a committed checkpoint, stops process 0
(it cannot finish a collective without its peer), restarts both with the same commands, and checks the
resumed run against an uninterrupted 1 process x 8 devices run and the shared checkpoint restored here
on 8 and on 4 devices.
"""

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

WORKER = Path(__file__).with_name("multiprocess_worker.py")
CLI_CHILD = Path(__file__).with_name("fault_child.py")  # the real `roro` CLI, optionally slowed
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # a hung coordinator or collective fails the test instead of hanging CI


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(port: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RORO_") and "_proxy" not in k.lower() and k != "XLA_FLAGS"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # listen on loopback only
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def load(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def leaves(d: dict, prefix: str) -> list[np.ndarray]:
    return [d[f"{prefix}{j}"] for j in range(sum(k[0] == prefix and k[1:].isdigit() for k in d))]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    assert jax.device_count() == 8, "tests run with 8 simulated CPU devices (see tests/conftest.py)"
    port = free_port()
    env = worker_env(port)
    procs, logs = [], []
    t0 = time.perf_counter()
    for i in range(2):
        log = open(tmp_path / f"worker{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path / f"p{i}.npz"), f"parallel.coordinator=127.0.0.1:{port}",
             "parallel.num_processes=2", f"parallel.process_id={i}"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        # meanwhile, the reference: one process, 8 devices, the same code
        spec = importlib.util.spec_from_file_location("multiprocess_worker", WORKER)
        ref_worker = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ref_worker)
        ref_worker.run(str(tmp_path / "ref.npz"), ["parallel.num_processes=1"])
        deadline = t0 + TIMEOUT_S
        codes = [p.wait(timeout=max(1.0, deadline - time.perf_counter())) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    tails = "\n".join(f"--- worker {i} ---\n" + (tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2))
    assert codes is not None, f"workers did not finish within {TIMEOUT_S}s\n{tails}"
    assert codes == [0, 0], f"worker exit codes {codes}\n{tails}"
    print(f"2 workers + reference: {time.perf_counter() - t0:.1f}s")

    ref = load(tmp_path / "ref.npz")
    runs = [load(tmp_path / f"p{i}.npz") for i in range(2)]
    assert int(ref["processes"]) == 1 and int(ref["devices"]) == 8
    for r in runs:
        assert (int(r["processes"]), int(r["devices"]), int(r["local_devices"])) == (2, 8, 4)
    ref_params = leaves(ref, "p")
    assert ref_params and not all(np.array_equal(a, b) for a, b in zip(leaves(ref, "i"), ref_params))  # it trained
    for a, b in zip(leaves(ref, "i"), leaves(runs[0], "i")):
        np.testing.assert_array_equal(a, b)  # the same initial router
    # both processes hold the same parameters, bit for bit, for either data contract
    for prefix in "pl":
        for a, b in zip(leaves(runs[0], prefix), leaves(runs[1], prefix)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(runs[0], "p"), leaves(runs[0], "l")):
        np.testing.assert_array_equal(a, b)  # each process passing its own rows = each passing all rows
    # ... and those of one process over 8 devices, up to the reduction order of the cross-process psum
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref_params, leaves(runs[0], "p")))
    loss_diff = float(np.max(np.abs(ref["losses"] - runs[0]["losses"])))
    print(f"max |params(2 processes) - params(1 process)| = {diff:.3g}; max loss diff {loss_diff:.3g}")
    # (the generic update sums loss_sum and loss_den across processes before dividing; a different reduction
    # order changes the last bits of a gradient, which Adam's first steps, ~lr * sign(g), carry into the
    # parameters: 1.2e-6 measured after 3 updates; a wrong reduction moves them by ~1e-3)
    for a, b in zip(ref_params, leaves(runs[0], "p")):
        np.testing.assert_allclose(b, a, atol=5e-6, rtol=0)
    np.testing.assert_allclose(runs[0]["losses"], ref["losses"], atol=1e-6, rtol=0)


# a run with checkpoints: the worker's problem, 8 updates, a checkpoint after every 2nd, the last 3 kept
CKPT_UPDATES = 8
CKPT_ARGS = ["world=synthetic", "synthetic.queries=16", "synthetic.steps=8", "synthetic.features=8",
             "router.hidden=[16,16]", "grpo.lr=1e-2", "grpo.group_size=4", "grpo.epochs=2", "grpo.minibatches=2",
             "parallel.mode=shard_map", f"train.updates={CKPT_UPDATES}", "checkpoint.every=2", "checkpoint.keep=3"]


def committed_steps(out: Path) -> list[int]:
    ck = out / "checkpoints"
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.exists() else []


def logged(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def start_pair(out: Path, port: int, tag: str) -> list[subprocess.Popen]:
    """``roro router CKPT_ARGS out_dir=out`` as processes 0 and 1 of one run (the same command each time)."""
    env = {**worker_env(port), "RORO_TEST_UPDATE_SLEEP": "1.0"}  # >= 1 s per update to kill it in
    procs = []
    for i in range(2):
        log_path = out.parent / f"{tag}.process{i}.log"
        with open(log_path, "w") as log:
            p = subprocess.Popen(
                [sys.executable, str(CLI_CHILD), "router", *CKPT_ARGS, f"out_dir={out}",
                 f"parallel.coordinator=127.0.0.1:{port}", "parallel.num_processes=2", f"parallel.process_id={i}"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        p.log_path = log_path
        procs.append(p)
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def tails(procs: list[subprocess.Popen]) -> str:
    return "\n".join(f"--- process {i} ---\n" + p.log_path.read_text()[-3000:] for i, p in enumerate(procs))


def restore_here(ckdir: Path, overrides: list[str]):
    """Restore the shared checkpoint into a fresh learner of this process (1 process) under ``overrides``."""
    from roro_jax.config import load_config
    from roro_jax.rl.checkpoint import Checkpointer
    from roro_jax.rl.trainer import RouterLearner

    cfg = load_config(None, CKPT_ARGS + ["parallel.num_processes=1", *overrides])
    learner = RouterLearner(cfg, cfg.synthetic.features)
    ck = Checkpointer(ckdir)
    try:
        meta = learner.restore(ck)
    finally:
        ck.close()
    return learner, meta


@pytest.mark.slow
def test_shared_checkpoints_survive_a_kill_and_restore_on_other_device_counts(tmp_path):
    assert jax.device_count() == 8, "tests run with 8 simulated CPU devices (see tests/conftest.py)"
    out = tmp_path / "shared"  # ONE out_dir for both processes
    port = free_port()
    t0 = time.perf_counter()
    procs = start_pair(out, port, "run1")
    try:
        # meanwhile, the reference: one process, 8 devices, uninterrupted, the same training code
        from pipelines.router_synthetic import train_router_synthetic
        from roro_jax.config import load_config

        ref_cfg = load_config(None, CKPT_ARGS + ["parallel.num_processes=1", f"out_dir={tmp_path / 'ref'}"])
        ref_learner, _ = train_router_synthetic(ref_cfg, progress=False)
        ref_params = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(ref_learner.params))]
        ref_losses = [row["loss"] for row in logged(tmp_path / "ref")]

        # kill process 1 mid-run, after a committed checkpoint
        deadline = t0 + TIMEOUT_S
        while not (committed_steps(out) and len(logged(out)) >= committed_steps(out)[-1] + 1):
            assert all(p.poll() is None for p in procs), f"a process ended before the kill\n{tails(procs)}"
            assert time.perf_counter() < deadline, f"no checkpoint within {TIMEOUT_S}s\n{tails(procs)}"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed_after, steps_at_kill = len(logged(out)), committed_steps(out)
        assert procs[1].wait(timeout=TIMEOUT_S) == -signal.SIGKILL
        try:  # process 0 cannot finish its next collective or barrier: let it fail, or kill it
            rc0 = procs[0].wait(timeout=20)
        except subprocess.TimeoutExpired:
            procs[0].kill()
            rc0 = f"killed ({procs[0].wait()})"
        assert killed_after < CKPT_UPDATES, f"the run finished before the kill\n{tails(procs)}"
    finally:
        stop(procs)
    steps_after_kill = committed_steps(out)  # a commit under way at the kill may have completed
    failed = "Connection closed by peer" in procs[0].log_path.read_text()
    print(f"process 1 SIGKILLed after update {killed_after} (checkpoints {steps_at_kill}, then {steps_after_kill}); "
          f"process 0: {rc0}{', its collective failed (connection closed by peer)' if failed else ''}")

    # both restart with the same commands and resume from the last committed checkpoint
    procs = start_pair(out, port, "run2")
    try:
        codes = [p.wait(timeout=max(1.0, t0 + 2 * TIMEOUT_S - time.perf_counter())) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        stop(procs)
    assert codes == [0, 0], f"restarted processes: exit codes {codes}\n{tails(procs)}"
    resumed = re.search(r"resuming .* after update (\d+) of", procs[0].log_path.read_text())
    assert resumed, tails(procs)
    resume_step = int(resumed.group(1))
    assert steps_at_kill[-1] <= resume_step == steps_after_kill[-1] < CKPT_UPDATES, (resume_step, steps_after_kill)
    rows = logged(out)
    assert [r["update"] for r in rows] == list(range(1, CKPT_UPDATES + 1))  # one shared log, no gap, no duplicate
    assert [r.get("resumed_from") for r in rows if "resumed_from" in r] == [resume_step]
    assert all(r["devices"] == 8 for r in rows)
    assert (out / "config.yaml").is_file() and committed_steps(out)[-1] == CKPT_UPDATES
    meta = json.loads((out / "checkpoints" / str(CKPT_UPDATES) / "meta" / "metadata").read_text())
    assert "_sha256" in meta  # every restore below verifies the saved bytes
    print(f"restarted: resumed after update {resume_step}, finished {CKPT_UPDATES}; "
          f"{time.perf_counter() - t0:.1f}s in all")

    # the resumed 2 x 4 run = the uninterrupted 1 x 8 run, up to the reduction order of the cross-process psum
    loss_diff = max(abs(a - b["loss"]) for a, b in zip(ref_losses, rows))
    np.testing.assert_allclose([r["loss"] for r in rows], ref_losses, atol=1e-6, rtol=0)

    # the shared checkpoint restores in this one process on 8 devices and on 4 devices
    restored = {}
    for devices in (8, 4):
        learner, meta = restore_here(out / "checkpoints", [f"parallel.devices={devices}"])
        assert meta["update"] == CKPT_UPDATES and learner.step == CKPT_UPDATES
        leaves = jax.tree.leaves(learner.state.params)
        assert all(x.sharding.mesh.devices.size == devices for x in leaves)
        restored[devices] = [np.asarray(x) for x in jax.device_get(leaves)]
    for a, b in zip(restored[8], restored[4]):
        np.testing.assert_array_equal(a, b)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ref_params, restored[8]))
    print(f"max |params(2 processes, killed, resumed) - params(1 process x 8, uninterrupted)| = {diff:.3g}; "
          f"max loss diff {loss_diff:.3g}; restored on 8 and on 4 devices: identical")
    for a, b in zip(ref_params, restored[8]):
        np.testing.assert_allclose(b, a, atol=5e-6, rtol=0)  # reduction order only (see the test above)

    # ... and `roro router`'s loop continues from it in this one process on 4 devices (parallel.devices is a
    # training key: a changed config, allowed explicitly), like the reference continued on 8
    more = [f"train.updates={CKPT_UPDATES + 2}", "parallel.num_processes=1"]
    cfg4 = load_config(None, CKPT_ARGS + more + ["parallel.devices=4", "checkpoint.allow_config_change=true",
                                                 f"out_dir={out}"])
    with pytest.warns(UserWarning, match="parallel.devices: 0 -> 4"):
        learner4, hist = train_router_synthetic(cfg4, progress=False)
    ref_learner, _ = train_router_synthetic(load_config(None, CKPT_ARGS + more + [f"out_dir={tmp_path / 'ref'}"]),
                                            progress=False)
    assert [r["update"] for r in hist] == [CKPT_UPDATES + 1, CKPT_UPDATES + 2] and hist[0]["devices"] == 4
    assert [r["update"] for r in logged(out)] == list(range(1, CKPT_UPDATES + 3))
    diff4 = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                zip(jax.tree.leaves(jax.device_get(ref_learner.params)), jax.tree.leaves(jax.device_get(learner4.params))))
    print(f"continued on 1 process x 4 devices to update {CKPT_UPDATES + 2}: max |params - reference| = {diff4:.3g}")
    assert diff4 <= 5e-6


def test_saved_param_shapes_are_read_without_starting_jax(tmp_path):
    """``roro router``'s preflight compares the newest checkpoint's parameter shapes with the config before
    a resuming process joins ``jax.distributed``, so reading them must not start a JAX backend (orbax's
    metadata readers do: the multi-process resume above then fails). A checkpoint without the recorded
    shapes (written before they were) falls back to orbax's metadata."""
    from roro_jax.config import load_config
    from roro_jax.rl.checkpoint import SHAPES_KEY, Checkpointer, param_shapes, saved_param_shapes
    from roro_jax.rl.trainer import RouterLearner

    cfg = load_config(None, CKPT_ARGS)
    learner = RouterLearner(cfg, cfg.synthetic.features)
    ck = Checkpointer(tmp_path, every=1)
    learner.save(ck, {"update": 0}, force=True)
    ck.close()
    want = param_shapes(learner.params)
    assert want and saved_param_shapes(tmp_path, 0) == want
    code = ("import json, sys; from jax._src import xla_bridge; from roro_jax.rl.checkpoint import saved_param_shapes; "
            "s = saved_param_shapes(sys.argv[1], 0); "
            "print(json.dumps({'backend_started': xla_bridge.backends_are_initialized(), 'shapes': s}))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=worker_env(free_port()),
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["backend_started"] is False
    assert {k: tuple(v) for k, v in got["shapes"].items()} == want

    meta_file = tmp_path / "0" / "meta" / "metadata"  # where orbax's JsonSave puts the meta
    meta = json.loads(meta_file.read_text())
    del meta[SHAPES_KEY]
    meta_file.write_text(json.dumps(meta))
    assert saved_param_shapes(tmp_path, 0) == want


def test_settings_from_config_keys_then_env(monkeypatch):
    from roro_jax import distributed
    from roro_jax.config import load_config

    for var in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert distributed.settings(load_config(None).parallel) == (None, 1, None)  # one process by default
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:29500")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "2")
    assert distributed.settings(load_config(None).parallel) == ("10.0.0.1:29500", 4, 2)
    cfg = load_config(None, ["parallel.coordinator=h:1", "parallel.num_processes=2", "parallel.process_id=1"])
    assert distributed.settings(cfg.parallel) == ("h:1", 2, 1)  # a key that is set wins
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="RORO_NUM_PROCESSES"):
        distributed.settings(load_config(None).parallel)


def test_initialize_is_a_noop_for_one_process_and_checks_its_arguments():
    from roro_jax import distributed

    assert distributed.initialize(None, None, None) is False
    assert distributed.initialize("127.0.0.1:1", 1, 0) is False
    with pytest.raises(ValueError, match="coordinator"):
        distributed.initialize(None, 2, 0)
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("127.0.0.1:1", 2, 2)
    assert not distributed.is_initialized()
