import json
import subprocess
import sys

from roro_jax.cli import main
from roro_jax.paths import REPO_ROOT


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "grpo.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def test_bad_override_is_a_clear_error(capsys):
    assert main(["config", "grpo.nope=1"]) == 2
    assert "grpo.nope" in capsys.readouterr().err


def test_router_command_trains_and_logs(tmp_path, capsys):
    rc = main(["router", "-c", str(REPO_ROOT / "configs/router_synthetic.yaml"), f"out_dir={tmp_path}",
               "train.updates=2", "synthetic.queries=8", "router.hidden=[16]"])
    assert rc == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["update"] for x in lines] == [1, 2]
    assert (tmp_path / "checkpoints").exists()


def test_bench_router_step_json():
    """`roro bench router-step --json` prints one JSON object with the ratio field (tiny sizes)."""
    out = subprocess.run([sys.executable, "-m", "roro_jax.cli", "bench", "router-step", "--json",
                          "--trajectories", "32", "--steps", "8", "--repeats", "2", "--sweep"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ratio"] > 0 and res["default"]["routing_steps"] == 256
    assert res["matmul_peak"]["xla_gflops"] > 0
