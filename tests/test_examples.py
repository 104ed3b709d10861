"""``examples/``: extensions written as a user would (a GSPO-style loss, REINFORCE with an RLOO baseline, a
reward term through ``--plugin``, a KL estimator selected by config). Each is a plugin module of at most 40
lines that only registers names (it edits no library object); each trains the synthetic router from the
command line in all four parallel modes on 8 simulated devices, and the data-parallel runs match one device."""

import ast
import json

import jax
import numpy as np
import pytest

from roro_jax.cli import main
from roro_jax.paths import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
CONFIG = str(REPO_ROOT / "configs" / "router_synthetic.yaml")
SMALL = ["train.updates=2", "synthetic.queries=8", "synthetic.steps=8", "router.hidden=[16]"]


def plugin(name):
    return str(EXAMPLES / name)


# example -> (command-line arguments as its docstring gives them, a check of its metrics log)
CASES = {
    "gspo_loss": (["--plugin", plugin("gspo_loss.py"), "grpo.loss=gspo", "grpo.clip_eps=0.05"],
                  lambda row: "seq_ratio" in row and "pg_loss" not in row),
    "reinforce_rloo": (["--plugin", plugin("reinforce_rloo.py"), "grpo.loss=reinforce", "grpo.adv_scale=rloo",
                        "grpo.epochs=1", "grpo.minibatches=1"],
                       lambda row: "logp" in row and "ratio" not in row),
    "brevity_reward": (["--plugin", plugin("brevity_reward.py"), "reward.weights.brevity=0.1"],
                       lambda row: row["reward/brevity"] < 0),
    "kl_estimator": ([f"plugins=[{plugin('kl_estimator.py')}]", "grpo.kl=k3_clamped", "grpo.beta=0.1"],
                     lambda row: np.isfinite(row["kl_ref"])),
}


def run(name, mode, out):
    args, _ = CASES[name]
    assert main(["router", "-c", CONFIG, *args, *SMALL, f"parallel.mode={mode}", f"out_dir={out}"]) == 0
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return {name: run(name, "single", tmp_path_factory.mktemp(name)) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_an_example_is_a_short_plugin_that_edits_no_library_object(name):
    path = EXAMPLES / f"{name}.py"
    assert len(path.read_text().splitlines()) <= 40
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        assert not any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in targets), \
            f"{path.name}:{node.lineno}: assigns into another object (a monkeypatch?)"
    assert f"examples/{name}.py" in (REPO_ROOT / "README.md").read_text()  # the README shows it


@pytest.mark.parametrize("mode", ["single", "shard_map", "pmap", "jit_sharded"])
@pytest.mark.parametrize("name", list(CASES))
def test_an_example_trains_in_every_parallel_mode(name, mode, single, tmp_path):
    assert jax.device_count() == 8, "tests run with 8 simulated CPU devices (see tests/conftest.py)"
    log = single[name] if mode == "single" else run(name, mode, tmp_path)
    assert [r["update"] for r in log] == [1, 2] and all(CASES[name][1](r) for r in log)
    assert all(r["mode"] == mode and r["devices"] == (1 if mode == "single" else 8) for r in log)
    # the same run as on one device: update 2's loss is taken at the parameters update 1 produced
    np.testing.assert_allclose([r["loss"] for r in log], [r["loss"] for r in single[name]], atol=1e-5)
    assert all(r["reward"] == s["reward"] for r, s in zip(log[:1], single[name][:1]))


def test_the_readme_shows_the_gspo_example_as_it_is():
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if 'register_policy_loss("gspo")' in b)
    example = (EXAMPLES / "gspo_loss.py").read_text()
    assert all(line in example for line in block.splitlines() if line.strip())
