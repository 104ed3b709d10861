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


def test_collect_pairs_rubric_commands_chain(tmp_path, capsys):
    """`roro collect` (toy world) -> `roro pairs` -> `roro rubric`, each reading what the previous wrote."""
    small = [f"out_dir={tmp_path}", "world=toy", "toy.explore_problems=10", "rollout.max_steps=8",
             "rollout.max_step_tokens=16", "rollout.temperature=0.7", "toy.max_batch=32",
             "exploration.random_rates=[0.3,0.6]", "exploration.thresholds=[0.99]", "exploration.critical_k=[1]",
             "exploration.anti_k=[1]"]
    assert main(["collect", *small]) == 0
    traj = tmp_path / "exploration" / "trajectories.jsonl"
    assert len(traj.read_text().splitlines()) == 5 * 10  # 5 policies x 10 problems
    assert main(["collect", *small]) == 0  # resumes: nothing new, nothing duplicated
    assert len(traj.read_text().splitlines()) == 50
    assert main(["pairs", "--trajectories", str(traj), "--out", str(tmp_path / "pairs.jsonl"), *small]) == 0
    assert (tmp_path / "pairs.jsonl").read_text().strip()
    rc = main(["rubric", "--trajectories", str(traj), "--pairs", str(tmp_path / "pairs.jsonl"), "--queries",
               str(tmp_path / "exploration" / "queries.json"), *small, "rubric.rounds=1", "rubric.judge.steps=4",
               "rubric.rubricor.sft_steps=4", "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=2",
               "rubric.rubricor.max_new_tokens=48", "rubric.gate.min_pairs=1"])
    assert rc == 0
    res = json.loads((tmp_path / "rubric" / "results.json").read_text())
    assert [g["phase"] for g in res["gate"]] == ["judge", "rubricor"]
    assert {"process_quality", "no_rubric", "phases"} <= set(res)
    assert "(c) rubric Judge" in capsys.readouterr().out


def test_collect_rejects_a_world_without_collector(capsys):
    assert main(["collect", "world=synthetic"]) == 2
    assert "roro collect" in capsys.readouterr().err


def test_router_command_on_the_toy_world_with_process_reward(tmp_path, capsys):
    """`roro router world=toy` with λ_p > 0: exploration, pairs and the rubric stage run first, then the
    router trains on the Judge's process reward (logged), resumably under <out_dir>/router."""
    args = ["router", "-c", str(REPO_ROOT / "configs/demo.yaml"), f"out_dir={tmp_path}", "train.updates=2",
            "toy.explore_problems=8", "toy.queries_per_update=2", "grpo.group_size=4",
            "exploration.random_rates=[0.3]", "exploration.thresholds=[0.99]", "exploration.critical_k=[1]",
            "exploration.anti_k=[1]", "rubric.judge.steps=4", "rubric.rubricor.sft_steps=4",
            "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=2", "rubric.rubricor.max_new_tokens=48",
            "rubric.gate.min_pairs=1"]
    assert main(args) == 0
    log = [json.loads(x) for x in (tmp_path / "router" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in log] == [1, 2] and all("reward/process" in r for r in log)
    assert (tmp_path / "rubric" / "gate.jsonl").exists()
    assert "update 2" in capsys.readouterr().out
