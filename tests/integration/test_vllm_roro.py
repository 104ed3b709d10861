"""The whole RoRo pipeline on the live world: the toy models served by real vLLM servers (``openai_server``
engines), a benchmark file of toy problems, every stage (exploration → pairs → Rubricor/Judge → GRPO and
RoRo routers → evaluation of every baseline), with small sizes."""

from __future__ import annotations

import json

import pytest

from roro_jax.config import load_config
from roro_jax.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def test_roro_pipeline_on_vllm_served_models(servers, model_dirs, tmp_path, report):
    from pipelines.roro import run_roro
    from roro_jax.tasks import toy
    from roro_jax.worlds.toy import toy_task_config

    probs = toy.generate(40, toy_task_config(), seed=3, split="test")
    bench = tmp_path / "toy_problems.jsonl"
    bench.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in probs))

    def engine(role):
        return [f"engines.{role}.kind=openai_server", f"engines.{role}.model={servers[role].name}",
                f"engines.{role}.endpoints=[{servers[role].url}]", f"engines.{role}.tokenizer_path={model_dirs[role]}",
                f"engines.{role}.concurrency=32", f"engines.{role}.timeout=60"]

    cfg = load_config(REPO_ROOT / "configs" / "demo.yaml", [
        "world=live", f"out_dir={tmp_path / 'run'}", f"live.benchmark={bench}", "live.train_frac=0.5",
        "live.explore_problems=10", "live.test_problems=12", "live.queries_per_update=4", "train.updates=2",
        "grpo.group_size=4", "sweep.lambda_c=[0.3]", "sweep.random_rates=[0.3]", "sweep.thresholds=[0.99]",
        "sweep.gammas=[0.5]", "exploration.random_rates=[0.3]", "exploration.thresholds=[0.99]",
        "exploration.critical_k=[1]", "exploration.anti_k=[1]", "rubric.rounds=1", "rubric.judge.steps=4",
        "rubric.rubricor.sft_steps=4", "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=2",
        "rubric.rubricor.max_new_tokens=48", "rubric.gate.min_pairs=1", "eval.n_boot=50",
        *engine("small"), *engine("large")])
    res = run_roro(cfg, progress=False)
    summary = res["summary"]
    methods = {m["method"] for m in summary["methods"]}
    assert {"random", "confidence-threshold", "STEER", "GRPO (outcome+cost)", "RoRo (outcome+process+cost)"} <= methods
    assert summary["lrm"]["n"] == 12
    roro_log = (tmp_path / "run" / "routers" / "RoRo_lc0.3" / "metrics.jsonl").read_text().splitlines()
    assert len(roro_log) == 2 and "reward/process" in json.loads(roro_log[0])
    report["roro_live_pipeline"] = {"seconds": {k: round(v, 1) for k, v in res["times"].items()},
                                    "srm_accuracy": summary["srm"]["accuracy"],
                                    "lrm_accuracy": summary["lrm"]["accuracy"]}
