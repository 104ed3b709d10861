"""Registries open end to end (issue 16, items 2 and 3): user code registers names through a plugin
(``--plugin``, ``plugins:``, the ``roro_jax.plugins`` entry points), the config accepts them, a reward term
changes the training reward, and every mistake is one ``roro: error:`` line naming the key."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.cli import main
from roro_jax.config import ConfigError, load_config
from roro_jax.paths import REPO_ROOT
from roro_jax.preflight import preflight
from roro_jax.registry import Registry, UnknownNameError
from roro_jax.rl import rewards as R
from roro_jax.rl.advantages import ADVANTAGE_ESTIMATORS, advantages, register_advantage, rloo_advantages
from roro_jax.rl.losses import KL_ESTIMATORS, register_kl
from roro_jax.router.features import FEATURE_FAMILIES, get_family, register_feature_family
from roro_jax.types import InputError
from roro_jax.worlds.replay import OUTCOME_RULES, register_outcome_rule
from roro_jax.worlds.reward_fields import REWARD_FIELDS
from roro_jax.worlds.variants import WORLDS, get_world, register_world

SYN = ["-c", str(REPO_ROOT / "configs/router_synthetic.yaml"), "synthetic.queries=8", "router.hidden=[16]",
       "train.updates=1"]


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """``plugin(name, code) -> name``: a module written to tmp_path, importable; its registrations and the
    module itself are removed afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []
    before = {id(r): set(r) for r in (R.REWARD_TERMS, KL_ESTIMATORS, ADVANTAGE_ESTIMATORS)}

    def make(name: str, code: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        made.append(name)
        return name

    yield make
    for reg in (R.REWARD_TERMS, KL_ESTIMATORS, ADVANTAGE_ESTIMATORS):
        for k in set(reg) - before[id(reg)]:
            reg.pop(k)
    for name in made:
        sys.modules.pop(name, None)


BREVITY = """
    from roro_jax.rl.rewards import register_reward

    @register_reward("brevity_plugin", needs=("small_tokens",))
    def brevity(batch):
        return -batch["small_tokens"] / 10.0
"""


def first_row(out_dir) -> dict:
    return json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[0])


# ------------------------------------------------------------------------------- a plugin reward term ---
def test_plugin_reward_term_changes_the_training_reward(plugin, tmp_path, capsys):
    """`roro router --plugin M reward.weights.brevity_plugin=0.5`: the term is evaluated in the synthetic
    world and added to the reward. Update 1 samples the same actions with and without it (same seed, same
    initial parameters), so the rewards differ by exactly 0.5 × the term's mean."""
    mod = plugin("roro_test_brevity", BREVITY)
    assert main(["router", *SYN, f"out_dir={tmp_path / 'base'}"]) == 0
    assert main(["router", *SYN, "--plugin", mod, "reward.weights.brevity_plugin=0.5",
                 f"out_dir={tmp_path / 'brevity'}"]) == 0
    base, brev = first_row(tmp_path / "base"), first_row(tmp_path / "brevity")
    assert "reward/brevity_plugin" not in base
    term = brev["reward/brevity_plugin"]
    assert term < -0.1  # -(kept steps)/10: synthetic queries have 8-16 steps, about half kept
    assert brev["large_share"] == base["large_share"] and brev["accuracy"] == base["accuracy"]
    np.testing.assert_allclose(brev["reward"] - base["reward"], 0.5 * term, rtol=1e-5, atol=1e-6)
    # the saved config records the weight, so a resume without it is refused as a config change
    assert "brevity_plugin: 0.5" in (tmp_path / "brevity" / "config.yaml").read_text()


def test_plugin_from_the_config_list_and_the_current_folder(tmp_path):
    """A ``plugins:`` list in a YAML config, the module next to it in the working folder (not on
    PYTHONPATH), run as a user runs ``roro``."""
    (tmp_path / "roro_test_cfg_plugin.py").write_text(textwrap.dedent(BREVITY))
    cfg = tmp_path / "my.yaml"
    cfg.write_text(f"plugins: [roro_test_cfg_plugin]\nreward:\n  weights: {{brevity_plugin: 0.5}}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-m", "roro_jax.cli", "router", "-c", str(cfg), "synthetic.queries=8",
                          "router.hidden=[16]", "train.updates=1", f"out_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert first_row(tmp_path / "run")["reward/brevity_plugin"] < 0


def test_plugin_given_as_a_file_path(plugin, tmp_path):
    path = tmp_path / "roro_test_file_plugin.py"
    path.write_text(textwrap.dedent(BREVITY))
    cfg = load_config(None, [f"plugins=[{path}]", "reward.weights.brevity_plugin=0.2"])
    assert cfg.reward.weights["brevity_plugin"] == 0.2 and cfg.plugins == [str(path)]
    sys.modules.pop("roro_test_file_plugin", None)


def test_entry_point_plugins_load(plugin, monkeypatch, capsys):
    mod = plugin("roro_test_ep_plugin", BREVITY)
    eps = [EntryPoint(name="brev", value=mod, group="roro_jax.plugins")]
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group=None: eps if group == "roro_jax.plugins" else [])
    assert main(["config", "reward.weights.brevity_plugin=0.3"]) == 0
    assert "brevity_plugin: 0.3" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- one-line errors ---
@pytest.mark.parametrize("override,says", [
    ("reward.weights.brevity_nope=0.1",
     "config key 'reward.weights.brevity_nope' (command line): unknown reward term 'brevity_nope'; registered: "
     "['cost', 'escalations', 'outcome', 'process']"),
    ("grpo.kl=k9", "config key 'grpo.kl' (command line): unknown KL estimator 'k9'; registered: "
                   "['exact', 'k1', 'k2', 'k3']"),
    ("grpo.adv_scale=gae", "config key 'grpo.adv_scale' (command line): unknown advantage estimator 'gae'; "
                           "registered: ['batch', 'group', 'none', 'rloo']"),
    ("router.features=tokens", "config key 'router.features' (command line): unknown feature family 'tokens'"),
    ("toy.variant=huge", "config key 'toy.variant' (command line): unknown toy world 'huge'"),
    ("reward.weights.outcome=lots", "config key 'reward.weights.outcome'"),
])
def test_unknown_names_are_one_line_naming_the_key(override, says, tmp_path, capsys, one_error):
    assert main(["router", *SYN, override, f"out_dir={tmp_path}"]) == 2
    assert says in one_error()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_unknown_term_in_a_config_file_names_the_file(tmp_path, capsys, one_error):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("reward:\n  weights: {brevity_nope: 0.1}\n")
    assert main(["config", "-c", str(cfg)]) == 2
    assert f"config key 'reward.weights.brevity_nope' ({cfg}): unknown reward term" in one_error()


@pytest.mark.parametrize("code,says", [
    (None, "plugin 'roro_test_missing_plugin' failed to import: ModuleNotFoundError: No module named "
           "'roro_test_missing_plugin'"),
    ("raise RuntimeError('boom')", "plugin 'roro_test_broken_plugin' failed to import: RuntimeError: boom"),
    ("def f(:\n", "plugin 'roro_test_broken_plugin' failed to import: SyntaxError"),
])
def test_failing_plugin_is_one_line_naming_the_module(code, says, plugin, tmp_path, capsys, one_error):
    name = "roro_test_missing_plugin" if code is None else plugin("roro_test_broken_plugin", code)
    assert main(["router", *SYN, "--plugin", name, f"out_dir={tmp_path}"]) == 2
    assert says in one_error()
    assert main(["config", f"plugins=[{name}]"]) == 2
    line = one_error()
    assert line.startswith("roro: error: config key 'plugins' (command line): ") and says in line


def test_failing_entry_point_is_one_line(monkeypatch, capsys, one_error):
    eps = [EntryPoint(name="gone", value="roro_test_no_such_ep:register", group="roro_jax.plugins")]
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group=None: eps if group == "roro_jax.plugins" else [])
    assert main(["config"]) == 2
    line = one_error()
    assert "plugin entry point 'gone' (roro_test_no_such_ep:register" in line and "ModuleNotFoundError" in line


# --------------------------------------------------------------------------- the reward-field contract ---
LATENCY = """
    from roro_jax.rl.rewards import register_reward

    @register_reward("latency_plugin", needs=("seconds",))
    def latency(batch):
        return -batch["seconds"]
"""


def test_term_needing_a_field_the_world_lacks_fails_before_training(plugin, tmp_path, capsys, one_error):
    mod = plugin("roro_test_latency", LATENCY)
    assert main(["router", *SYN, "--plugin", mod, "reward.weights.latency_plugin=0.1", f"out_dir={tmp_path}"]) == 2
    line = one_error()
    assert ("config key 'reward.weights.latency_plugin'=0.1: reward term 'latency_plugin' needs the reward field "
            "'seconds', which the synthetic world's reward batch lacks") in line
    assert not (tmp_path / "metrics.jsonl").exists()
    # weight 0: the term is not evaluated, nothing to check
    assert main(["router", *SYN, "--plugin", mod, "reward.weights.latency_plugin=0", f"out_dir={tmp_path}"]) == 0


@pytest.mark.parametrize("world", ["toy", "replay", "live"])
def test_contract_names_every_world(world, plugin):
    plugin("roro_test_latency_w", LATENCY)
    cfg = load_config(None, [f"world={world}", "plugins=[roro_test_latency_w]", "reward.weights.latency_plugin=1",
                             "reward.weights.process=0"])
    with pytest.raises(ConfigError, match=f"reward term 'latency_plugin' needs the reward field 'seconds', which "
                                          f"the {world} world's reward batch lacks"):
        preflight(cfg, "router", fresh=True)


def test_each_world_fills_the_fields_it_declares():
    from roro_jax.rl.stream import reward_inputs
    from roro_jax.worlds import synthetic

    q = synthetic.make_queries(jax.random.PRNGKey(0), 4, 6, 3)
    actions = (jax.random.uniform(jax.random.PRNGKey(1), q.mask.shape) < 0.5).astype(jnp.int32)
    correct, share = synthetic.outcomes(jax.random.PRNGKey(2), actions, q.critical, q.mask)
    rb = synthetic.reward_batch(correct, actions, q.mask)
    assert set(rb) == REWARD_FIELDS["synthetic"]
    np.testing.assert_allclose(rb["large_share"], share)
    np.testing.assert_allclose(rb["large_tokens"] / (rb["small_tokens"] + rb["large_tokens"]), share, rtol=1e-6)
    # toy / live: the rollout's trajectories; process comes from the scorer
    assert set(reward_inputs([])) | {"process"} == REWARD_FIELDS["toy"] == REWARD_FIELDS["live"]


def test_builtin_escalation_term_runs_in_the_synthetic_world(tmp_path):
    assert main(["router", *SYN, "reward.weights.escalations=0.2", f"out_dir={tmp_path}"]) == 0
    row = first_row(tmp_path)
    np.testing.assert_allclose(row["reward/escalations"], -row["large_share"], rtol=1e-6)


# ------------------------------------------------------------------------------------------- RLOO ---
def rloo_reference(r: np.ndarray, g: int) -> np.ndarray:
    out = np.zeros_like(r, dtype=np.float64)
    for s in range(0, len(r), g):
        grp = r[s:s + g]
        ok = np.isfinite(grp)
        if ok.sum() < 2:
            continue
        for i in np.flatnonzero(ok):
            others = [grp[j] for j in np.flatnonzero(ok) if j != i]
            out[s + i] = grp[i] - np.mean(others)
    return out


def test_rloo_matches_numpy_reference():
    rng = np.random.default_rng(0)
    r = rng.normal(size=48).astype(np.float32)
    r[[3, 17, 18, 19, 20, 21, 22, 23]] = np.nan  # one NaN; one group with a single finite reward
    for g in (2, 4, 8):
        want = rloo_reference(r, g)
        np.testing.assert_allclose(np.asarray(rloo_advantages(r, g)), want, rtol=1e-5, atol=1e-6)
        got = jax.jit(advantages, static_argnames=("group_size", "estimator"))(r, group_size=g, estimator="rloo")
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # n/(n-1) × (r - group mean)
    x = np.array([1.0, 2.0, 6.0], np.float32)
    np.testing.assert_allclose(np.asarray(rloo_advantages(x, 3)), 1.5 * (x - 3.0), rtol=1e-6)


def test_training_uses_the_configured_estimator():
    from roro_jax.rl.trainer import score_trajectories

    rb = {"correct": jnp.array([1, 0, 0, 1, 1, 1], jnp.float32), "large_share": jnp.linspace(0, 1, 6)}
    cfg = load_config(None, ["grpo.group_size=3", "grpo.adv_scale=rloo"])
    rewards, _, adv = score_trajectories(rb, cfg)
    np.testing.assert_allclose(np.asarray(adv), rloo_reference(np.asarray(rewards), 3), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------- registries ---
REGISTRIES = [
    (R.REWARD_TERMS, R.REWARD_TERMS.get, "reward term", ["outcome", "cost", "process", "escalations"]),
    (KL_ESTIMATORS, KL_ESTIMATORS.get, "KL estimator", ["k1", "k2", "k3", "exact"]),
    (ADVANTAGE_ESTIMATORS, ADVANTAGE_ESTIMATORS.get, "advantage estimator", ["group", "batch", "none", "rloo"]),
    (FEATURE_FAMILIES, get_family, "feature family", ["logprob", "prm"]),
    (OUTCOME_RULES, OUTCOME_RULES.get, "outcome rule", ["last_writer", "majority", "prm_gate", "both", "either"]),
    (WORLDS, get_world, "toy world", ["control", "lucky", "sparse"]),
    (REWARD_FIELDS, REWARD_FIELDS.get, "world", ["synthetic", "replay", "toy", "live"]),
]


@pytest.mark.parametrize("reg,get,kind,names", REGISTRIES, ids=[r[2] for r in REGISTRIES])
def test_unknown_name_error_lists_the_names(reg, get, kind, names):
    assert set(names) <= set(reg.names()) and all(n in reg for n in names)
    with pytest.raises(UnknownNameError) as e:
        get("no_such_name")
    assert isinstance(e.value, InputError) and isinstance(e.value, KeyError)
    assert str(e.value) == f"unknown {kind} 'no_such_name'; registered: {reg.names()}"


def test_registry_basics():
    reg: Registry[int] = Registry("thing")
    assert reg.add("a", 1) == 1

    @reg.register("f")
    def f():
        return 2

    assert f() == 2 and reg.get("f") is f and reg["a"] == 1
    reg.add("a", 3)  # replaces
    assert reg.names() == ["a", "f"] and len(reg) == 2 and "a" in reg and "b" not in reg and reg["a"] == 3
    assert dict(reg.items()) == {"a": 3, "f": f}
    with pytest.raises(UnknownNameError, match=r"unknown thing 'b'; registered: \['a', 'f'\]"):
        reg["b"]
    with pytest.raises(ValueError):
        reg.add("", 1)


def test_names_registered_in_code_pass_config_validation():
    """Every registry-backed key accepts a name registered after import (no fixed choices)."""
    from roro_jax.worlds.variants import ToyWorld

    register_kl("k_test", lambda logp, ref: logp - ref)
    register_advantage("adv_test")(lambda r, g, *, eps, ddof: r)
    register_feature_family("fam_test", ("a",))(lambda x: x)
    register_outcome_rule("rule_test")(lambda ctx: None)
    register_world(dataclasses.replace(get_world("control"), name="world_test"))
    R.register_reward("term_test")(lambda b: b["correct"])
    try:
        cfg = load_config(None, ["grpo.kl=k_test", "grpo.adv_scale=adv_test", "router.features=fam_test",
                                 "replay.outcome_rule=rule_test", "toy.variant=world_test",
                                 "reward.weights.term_test=0.5"])
        assert (cfg.grpo.kl, cfg.grpo.adv_scale, cfg.router.features) == ("k_test", "adv_test", "fam_test")
        assert (cfg.replay.outcome_rule, cfg.toy.variant, cfg.reward.weights["term_test"]) == ("rule_test",
                                                                                              "world_test", 0.5)
        assert isinstance(get_world("world_test"), ToyWorld)
    finally:
        for reg, name in [(KL_ESTIMATORS, "k_test"), (ADVANTAGE_ESTIMATORS, "adv_test"),
                          (FEATURE_FAMILIES, "fam_test"), (OUTCOME_RULES, "rule_test"), (WORLDS, "world_test"),
                          (R.REWARD_TERMS, "term_test")]:
            reg.pop(name)
