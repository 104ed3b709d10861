import json
import os
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


def test_removed_keys_are_one_error_line_naming_the_key(tmp_path, capsys):
    """``router.topk`` and ``train.log_every`` did nothing and left the schema: an old config that sets one
    is the usual unknown-key error, from a file or the command line."""
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  updates: 2\n  log_every: 5\n")
    assert main(["config", "-c", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roro: error: config key 'train.log_every'") and "old.yaml" in err[0]
    assert main(["config", "router.topk=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roro: error: config key 'router.topk'")


def test_router_command_trains_and_logs(tmp_path, capsys):
    rc = main(["router", "-c", str(REPO_ROOT / "configs/router_synthetic.yaml"), f"out_dir={tmp_path}",
               "train.updates=2", "synthetic.queries=8", "router.hidden=[16]"])
    assert rc == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["update"] for x in lines] == [1, 2]
    assert (tmp_path / "checkpoints").exists()
    assert f"(log: {tmp_path / 'metrics.jsonl'})" in capsys.readouterr().out


def test_bench_router_step_json():
    """`roro bench router-step --json` prints one JSON object with the ratio field (tiny sizes)."""
    out = subprocess.run([sys.executable, "-m", "roro_jax.cli", "bench", "router-step", "--json",
                          "--trajectories", "32", "--steps", "8", "--repeats", "2", "--sweep", "128"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=1500)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ratio"] > 0 and res["default"]["routing_steps"] == 256
    assert [r["routing_steps"] for r in res["sweep"]] == [128]
    assert res["matmul_peak"]["xla_gflops"] > 0
    # the update's share of XLA's matmul rate, for the default size and every sweep row
    peak = res["matmul_peak"]["xla_gflops"]
    assert res["matmul_share"] == res["default"]["jax_gflops"] / peak > 0
    assert res["sweep"][0]["matmul_share"] == res["sweep"][0]["jax_gflops"] / peak > 0
    m = res["machine"]  # CPU model, cores, load average at start and end; a warning when the load > cores
    assert m["cpu_model"] and m["cores"] >= 1 and len(m["load_avg"]) == 3 and len(m["load_avg_end"]) == 3
    busy = max(m["load_avg"][0], m["load_avg_end"][0]) > m["cores"]
    assert ("warning" in res) == busy and (not busy or "ratios are unreliable" in out.stderr)
    assert "256 routing steps" in out.stderr  # the progress bar


def test_bench_router_step_parallel_mode():
    """`roro bench router-step --mode shard_map --devices 4` measures the data-parallel update."""
    out = subprocess.run([sys.executable, "-m", "roro_jax.cli", "bench", "router-step", "--mode", "shard_map",
                          "--devices", "4", "--trajectories", "32", "--steps", "8", "--repeats", "1", "--sweep"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=1500)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mode=shard_map on 4 device(s)" in out.stdout and "load average" in out.stdout


def test_load_warning_above_the_core_count():
    from roro_jax.benchmarking import load_warning

    assert load_warning([[1.5, 1.0, 1.0], [2.0, 1.0, 1.0]], 2) is None
    assert "load average 2.50 > 2 cores" in load_warning([[1.5, 1.0, 1.0], [2.5, 1.0, 1.0]], 2)
    assert load_warning([None, None], 2) is None


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
    out = capsys.readouterr().out
    assert "update 2" in out and f"(log: {tmp_path / 'router' / 'metrics.jsonl'})" in out


def test_demo_without_c_runs_what_make_demo_runs(monkeypatch, tmp_path):
    """`roro demo` (no -c) hands the demo the shipped configs/demo.yaml, the Makefile's CONFIG for `make demo`
    (it used to run the synthetic world). The pipeline itself runs in tests/test_readme.py."""
    import re

    import pipelines.demo as demo
    from roro_jax.config import load_config

    make = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^CONFIG \?= configs/demo\.yaml$", make, re.M) and "roro demo -c $(CONFIG)" in make
    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda cfg, quick=False: seen.append(cfg))
    assert main(["demo", f"out_dir={tmp_path}"]) == 0
    assert seen == [load_config(REPO_ROOT / "configs/demo.yaml", [f"out_dir={tmp_path}"])]
    assert seen[0].world == "toy"


def test_installed_wheel_ships_configs_and_benchmarks(tmp_path):
    """Built as a wheel and installed outside the checkout: `roro config -c configs/demo.yaml` and `roro bench
    router-step` work from a folder with no configs/ or benchmarks/ (they ship as roro_jax.configs / .benchmarks)."""
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", str(wheels), str(REPO_ROOT)],
                   check=True, cwd=tmp_path, timeout=600, capture_output=True)
    (whl,) = wheels.glob("roro_jax-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(whl)], check=True, timeout=600,
                   capture_output=True)
    assert (site / "roro_jax" / "configs" / "demo.yaml").is_file() and not (site / "roro_jax" / "configs").is_symlink()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(site)}

    def roro(*args):
        return subprocess.run([sys.executable, "-m", "roro_jax.cli", *args], capture_output=True, text=True,
                              cwd=work, env=env, timeout=900)

    out = roro("config", "-c", "configs/demo.yaml")
    assert out.returncode == 0 and "world: toy" in out.stdout, out.stderr
    out = roro("bench", "router-step", "--json", "--trajectories", "32", "--steps", "8", "--repeats", "1", "--sweep")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ratio"] > 0 and res["machine"]["cores"] >= 1 and res["machine"]["cpu_model"]
    assert roro("bench", "router-step", "--help").returncode == 0
