"""Multi-process training: 2 JAX processes x 4 CPU devices train the router as 1 process x 8 devices.

Real processes: each worker (tests/rl/multiprocess_worker.py) joins ``jax.distributed`` through a
coordinator on a free loopback port (``parallel.coordinator`` etc., so ``RouterLearner`` initialises the
runtime itself), and the ``shard_map`` update's psum/all_gather cross the processes over Gloo (TCP).
The single-process reference runs here, in the test process, which has 8 simulated CPU devices.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

WORKER = Path(__file__).with_name("multiprocess_worker.py")
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
    for a, b in zip(ref_params, leaves(runs[0], "p")):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
    np.testing.assert_allclose(runs[0]["losses"], ref["losses"], atol=1e-6, rtol=0)


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
