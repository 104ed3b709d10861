"""Online router training survives a dying server (issue 19, item 1).

``roro router`` on the live world (the toy models behind the real vLLM servers of the session, outcome +
cost GRPO: every update routes fresh trajectories through both servers) runs in a child process, as a user
runs it. Mid-run, once two updates are logged, the small model's real server is SIGKILLed. The run must stop
with one ``roro: error:`` line naming the endpoint (exit 1, no traceback) and lose no completed update:
checkpoints are due only every 100 updates, so the updates logged before the error are on disk only
because a run stopping on an error checkpoints its last completed update. The server is restarted and the
same command resumes from that checkpoint to the end. Checked against an uninterrupted run of the same
command (run first, on the same servers): the metrics log holds each update exactly once (no gap, no
duplicate), the first resumed row says where it resumed, and, since every request carries its own seed
(from the seed, update, query, sample and step), the resumed run routes the same trajectories after the
restart as the uninterrupted run (same rewards, accuracy and large-model share in every update) and ends
with the same parameters (to float tolerance: vLLM's log-probs, the router's features, may differ in the
last bits between batches). Figures (updates lost, duplicates, seconds from the kill to the error, resume
step) go to the stage's report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from roro_jax.paths import REPO_ROOT

pytestmark = pytest.mark.integration

UPDATES = 4
KILL_AFTER = 2  # logged updates before the kill
TIMEOUT = 600  # s per child: a hang guard only
EXACT = ("reward", "accuracy", "large_share", "escalation_rate", "reward/outcome", "reward/cost")


def _args(servers, model_dirs, bench: Path, out: Path) -> list[str]:
    eng = []
    for role in ("small", "large"):
        eng += [f"engines.{role}.kind=openai_server", f"engines.{role}.model={servers[role].name}",
                f"engines.{role}.endpoints=[{servers[role].url}]", f"engines.{role}.tokenizer_path={model_dirs[role]}",
                f"engines.{role}.concurrency=32", f"engines.{role}.timeout=60"]
    return ["router", "-c", str(REPO_ROOT / "configs" / "demo.yaml"), "world=live", f"out_dir={out}",
            f"live.benchmark={bench}", "live.train_frac=0.5", "live.explore_problems=8", "live.queries_per_update=4",
            "grpo.group_size=4", f"train.updates={UPDATES}", "reward.weights.process=0", "checkpoint.every=100",
            *eng]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``roro ARGS`` in a child process; stdout to ``log``, stderr to ``log`` + ``.err``."""
    with open(log, "w") as f, open(f"{log}.err", "w") as e:
        p = subprocess.Popen([sys.executable, "-m", "roro_jax.cli", *args], cwd=REPO_ROOT, env=env, stdout=f,
                             stderr=e)
    p.log_path = log
    return p


def _finish(p: subprocess.Popen) -> tuple[int, str, str]:
    try:
        p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    return p.returncode, p.log_path.read_text(), Path(f"{p.log_path}.err").read_text()


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _steps(out: Path) -> list[int]:
    ck = out / "checkpoints"
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.exists() else []


def _state(out: Path, step: int) -> list[np.ndarray]:
    """The TrainState leaves saved at ``step``, read with plain orbax."""
    import jax
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(out / "checkpoints" / str(step) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_router_on_live_world_survives_a_killed_server(servers, model_dirs, tmp_path, report):
    from roro_jax.tasks import toy
    from roro_jax.worlds.toy import toy_task_config

    probs = toy.generate(40, toy_task_config(), seed=3, split="test")
    bench = tmp_path / "toy_problems.jsonl"
    bench.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in probs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    ref, run = tmp_path / "reference", tmp_path / "run"
    small_url = servers["small"].url

    # 1. the uninterrupted run
    t0 = time.time()
    rc, out, err = _finish(_start(_args(servers, model_dirs, bench, ref), env, tmp_path / "reference.out"))
    ref_s = time.time() - t0
    assert rc == 0, out + err
    ref_rows = _rows(ref)
    assert [r["update"] for r in ref_rows] == list(range(1, UPDATES + 1))

    # 2. the same command, the small model's server SIGKILLed once KILL_AFTER updates are logged
    restart_s = None
    try:
        p = _start(_args(servers, model_dirs, bench, run), env, tmp_path / "run.out")
        deadline = time.time() + TIMEOUT
        while len(_rows(run)) < KILL_AFTER:
            assert p.poll() is None, f"the run ended before the kill:\n{_finish(p)}"
            assert time.time() < deadline
            time.sleep(0.02)
        servers["small"].kill()  # SIGKILL of the real server's process group
        t_kill = time.time()
        logged_at_kill = len(_rows(run))
        rc, out, err = _finish(p)
        error_s = time.time() - t_kill
        rows_at_error, steps_at_error = _rows(run), _steps(run)

        assert rc == 1, out + err
        assert "Traceback" not in err, err
        errors = [ln for ln in err.splitlines() if ln.startswith("roro: error:")]
        assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
        assert small_url in errors[0] and "failed after" in errors[0], errors[0]
        n_done = len(rows_at_error)
        assert KILL_AFTER <= logged_at_kill <= n_done < UPDATES, (logged_at_kill, n_done)  # really mid-run
        assert [r["update"] for r in rows_at_error] == list(range(1, n_done + 1))  # whole rows, no partial update
        assert all("loss" in r for r in rows_at_error)
        assert steps_at_error == [n_done], steps_at_error  # every completed update is on disk (every=100)
        assert f"updates 1..{n_done} are checkpointed" in err, err

        # 3. restart the server, rerun the same command: it resumes
        t0 = time.time()
        servers["small"].start(timeout=600)
        restart_s = time.time() - t0
        t0 = time.time()
        rc, out, err = _finish(_start(_args(servers, model_dirs, bench, run), env, tmp_path / "resumed.out"))
        resumed_s = time.time() - t0
        assert rc == 0, out + err
    finally:
        if not servers["small"].alive():  # never leave the later tests without their server
            servers["small"].start(timeout=600)
    assert f"resuming {run} after update {n_done} of {UPDATES}" in out, out
    rows = _rows(run)
    updates = [r["update"] for r in rows]
    assert updates == list(range(1, UPDATES + 1)), updates  # no gap, no duplicate
    assert rows[n_done]["resumed_from"] == n_done
    assert rows[:n_done] == rows_at_error  # the rows before the error are kept as they were

    # 4. against the uninterrupted run: the same routes in every update, the same final parameters
    for a, b in zip(rows, ref_rows):
        for k in EXACT:
            assert a[k] == b[k], (a["update"], k, a[k], b[k])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    got, want = _state(run, UPDATES), _state(ref, UPDATES)
    assert len(got) == len(want)
    diff = max(float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0 for x, y in zip(got, want))
    scale = max(float(np.max(np.abs(y))) if y.size else 0.0 for y in want)
    assert diff <= 1e-5 * max(scale, 1.0), diff
    bitwise = all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(got, want))

    figures = {
        "updates": UPDATES, "killed_after_update": logged_at_kill, "completed_updates_at_error": n_done,
        "resume_step": n_done, "updates_lost": n_done - steps_at_error[-1],
        "duplicates": len(updates) - len(set(updates)), "gaps": len(set(range(1, UPDATES + 1)) - set(updates)),
        "seconds_from_kill_to_error": round(error_s, 1), "restart_seconds": round(restart_s, 1),
        "reference_run_seconds": round(ref_s, 1), "resumed_run_seconds": round(resumed_s, 1),
        "same_routes_every_update": True, "max_abs_param_diff_vs_uninterrupted": diff,
        "params_bitwise_equal": bitwise, "error": errors[0][:240]}
    report["router_server_kill"] = figures
    print("\nroro router, live world, small server SIGKILLed mid-run:")
    for k, v in figures.items():
        print(f"  {k}: {v}")
