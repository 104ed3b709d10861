"""Config mistakes a new user makes: each is one ``roro: error: ...`` line naming the key(s), exit status 2,
before anything is compiled (issue 17). Compiles are counted with JAX's own monitoring events."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from roro_jax.cli import main
from roro_jax.paths import REPO_ROOT

COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: COMPILES.append(name) if name == "/jax/core/compile/backend_compile_duration" else None)

SYN = ["-c", str(REPO_ROOT / "configs/router_synthetic.yaml"), "synthetic.queries=8", "router.hidden=[16]",
       "train.updates=1"]


def run_mistake(argv, capsys):
    n = len(COMPILES)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return rc, lines, len(COMPILES) - n


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 1-update synthetic run with router.hidden=[16] (its checkpoint, config.yaml, metrics)."""
    out = tmp_path_factory.mktemp("run")
    assert main(["router", *SYN, f"out_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("argv,says", [
    (["router", *SYN, "parallel.mode=shard_map", "parallel.devices=16"],
     ["'parallel.devices'=16", "only 8 devices are visible"]),
    (["router", *SYN, "synthetic.queries=6", "grpo.minibatches=4", "parallel.mode=shard_map"],
     ["'synthetic.queries'=6", "'grpo.group_size'=8", "'grpo.minibatches'=4", "over 8 devices",
      "set synthetic.queries=8"]),
    (["router", *SYN, "synthetic.queries=3", "grpo.minibatches=5"],
     ["'synthetic.queries'=3", "'grpo.minibatches'=5", "set synthetic.queries=5"]),
    (["router", *SYN, "reward.weights.process=0.5"], ["'reward.weights.process'=0.5", "synthetic world has no Judge"]),
    (["demo", "-c", str(REPO_ROOT / "configs/router_synthetic.yaml"), "reward.weights.process=0.5"],
     ["'reward.weights.process'=0.5"]),
    (["router", *SYN, "router.hidden=128"], ["'router.hidden'", "write router.hidden=[128]"]),
    (["demo", "router.hidden=128"], ["'router.hidden'", "write router.hidden=[128]"]),
    (["demo", "router.features=prm"], ["'router.features'='prm'", "toy world computes only", "['logprob']"]),
    (["collect", "world=live", "router.features=prm"], ["'router.features'='prm'", "live world"]),
    (["collect", "world=live", "pairs.process_label=checkpoints"],
     ["'pairs.process_label'='checkpoints'", "live world", "no reference steps", "set pairs.process_label=quality"]),
    (["router", *SYN, "pairs.process_label=checkpoints"], ["'pairs.process_label'='checkpoints'", "synthetic world"]),
    (["demo", "toy.queries_per_update=3", "grpo.minibatches=5"],
     ["'toy.queries_per_update'=3", "'grpo.minibatches'=5", "set toy.queries_per_update=5"]),
])
def test_config_mistake_is_one_line_before_any_compile(argv, says, tmp_path, capsys):
    rc, lines, compiles = run_mistake([*argv, f"out_dir={tmp_path}"], capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("roro: error: "), lines
    for s in says:
        assert s in lines[0], lines[0]
    assert compiles == 0, f"{compiles} XLA compiles before the error"
    assert not (tmp_path / "metrics.jsonl").exists()  # the batch-split mistake used to leave an empty log


def test_tensorboard_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX -> ImportError
    rc, lines, compiles = run_mistake(["router", *SYN, f"out_dir={tmp_path}", "logging.tensorboard=true"], capsys)
    assert rc == 2 and len(lines) == 1 and compiles == 0, lines
    assert "'logging.tensorboard'" in lines[0] and "pip install 'roro_jax[tensorboard]'" in lines[0]


def test_resume_with_a_changed_config_is_refused(trained_run, capsys):
    """A run in out_dir made under another config: refused, listing the differing keys, before any compile;
    --allow-config-change then lets the checkpoint's shapes speak: one line naming the parameter and --fresh."""
    more = [f"out_dir={trained_run}", "train.updates=2"]  # extending a run is allowed...
    rc, lines, compiles = run_mistake(["router", *SYN, *more, "router.hidden=[32]", "grpo.lr=0.5"], capsys)
    assert rc == 2 and len(lines) == 1 and compiles == 0, lines  # ...changing what it trains is not
    assert "holds a run made with another config (2 keys differ" in lines[0]
    assert "grpo.lr: 0.001 -> 0.5" in lines[0] and "router.hidden: [16] -> [32]" in lines[0]
    assert "--fresh" in lines[0] and "--allow-config-change" in lines[0]

    rc, lines, compiles = run_mistake(["router", *SYN, *more, "router.hidden=[32]", "--allow-config-change"], capsys)
    assert rc == 2 and len(lines) == 1 and compiles == 0, lines
    assert "parameter 'head/kernel' has shape (16, 2) in the checkpoint but (32, 2)" in lines[0], lines[0]
    assert "--fresh" in lines[0]
    log = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in log] == [1]  # nothing was run or lost


def test_checkpoint_shape_mismatch_without_a_saved_config(trained_run, tmp_path, capsys):
    """A run folder from before config.yaml existed: the shape check alone names the parameter (the library
    call too, not only the CLI: Checkpointer.restore raises it instead of three orbax tree dumps)."""
    import shutil

    from roro_jax.config import load_config
    from roro_jax.rl.checkpoint import CheckpointMismatchError, Checkpointer
    from roro_jax.rl.trainer import RouterLearner

    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    (old / "config.yaml").unlink()
    rc, lines, compiles = run_mistake(["router", *SYN, f"out_dir={old}", "router.hidden=[16,16]", "train.updates=2"],
                                      capsys)
    assert rc == 2 and len(lines) == 1 and compiles == 0, lines
    assert "parameter 'layers/1/bias' exists only under the current config" in lines[0] and "--fresh" in lines[0]

    cfg = load_config(str(REPO_ROOT / "configs/router_synthetic.yaml"), ["router.hidden=[24]"])
    learner = RouterLearner(cfg, cfg.synthetic.features)
    ck = Checkpointer(old / "checkpoints")
    with pytest.raises(CheckpointMismatchError, match=r"parameter 'head/kernel' has shape \(16, 2\) in the "
                                                       r"checkpoint but \(24, 2\)"):
        learner.restore(ck)
    ck.close()


def test_one_line_and_no_compile_in_a_fresh_process(tmp_path):
    """The same in a fresh process with JAX's compile log on: stderr is exactly the one error line."""
    env = {**os.environ, "JAX_LOG_COMPILES": "1"}
    out = subprocess.run([sys.executable, "-m", "roro_jax.cli", "router", *SYN, f"out_dir={tmp_path}",
                          "synthetic.queries=6", "parallel.mode=pmap"],
                         capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith("roro: error: config "
                                                                                              "keys 'synthetic.queries'=6")


@pytest.mark.parametrize("process, sub", [(0.0, ""), (0.5, "router")])
def test_router_run_dir_of_the_toy_and_live_worlds(process, sub, tmp_path):
    """Without a process reward `roro router` (toy / live world) trains in out_dir itself (no rubric stage
    first), so that is where the resume checks must look; with one, in <out_dir>/router."""
    from roro_jax.config import load_config
    from roro_jax.preflight import router_run_dir

    for world in ("toy", "live"):
        cfg = load_config(None, [f"world={world}", f"reward.weights.process={process}", f"out_dir={tmp_path}"])
        assert router_run_dir(cfg, "router") == tmp_path / sub


def test_resuming_a_grpo_router_on_the_live_world_checks_the_run_dir(trained_run, capsys):
    """A live-world GRPO router (no process reward) pointed at another run's out_dir is refused before any
    engine is made or anything compiles."""
    rc, lines, compiles = run_mistake(["router", "world=live", "reward.weights.process=0", f"out_dir={trained_run}",
                                       "engines.small.model=s", "engines.large.model=l"], capsys)
    assert rc == 2 and len(lines) == 1 and compiles == 0, lines
    assert "holds a run made with another config" in lines[0] and "world: 'synthetic' -> 'live'" in lines[0]
