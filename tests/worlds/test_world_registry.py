"""One World interface (issue 16 item 6): every world the ``roro`` commands can run is a
:class:`roro_jax.worlds.base.World` in one registry; the config's ``world`` choices are its names, a world
registered by a plugin runs ``roro router`` end to end, and a world lacking a command's entry point (or an
unknown world) is one ``roro: error:`` line."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from roro_jax.cli import main
from roro_jax.config import ConfigError, load_config
from roro_jax.paths import REPO_ROOT
from roro_jax.rollout import default_prompt
from roro_jax.tasks import toy
from roro_jax.worlds import WORLDS, World, WorldError, get_world, register_world
from roro_jax.worlds.base import Lazy
from roro_jax.worlds.reward_fields import REWARD_FIELDS, register_reward_fields

BUILTIN = ["synthetic", "replay", "toy", "live"]
SYN = ["-c", str(REPO_ROOT / "configs/router_synthetic.yaml"), "synthetic.queries=8", "router.hidden=[16]",
       "train.updates=2"]
FUNCTIONS = ("train_router", "collect", "evaluate", "demo", "quick_overrides", "make_engines", "train_problems",
             "validation_problems", "test_problems", "prompt_fn", "annotate", "queries_per_update",
             "router_in_features")

# a world of the user's own, from library pieces only: the synthetic batch, its own collect and trainer
PLUGIN = """
    import jax
    import jax.numpy as jnp

    from roro_jax.rl.trainer import RouterLearner, run_training, score_trajectories
    from roro_jax.router.mlp import action_logp_entropy
    from roro_jax.worlds import get_world, register_world
    from roro_jax.worlds import synthetic as S

    CALLS = []


    def train(cfg, *, resume=True):
        CALLS.append(cfg.world)
        learner, s, G = RouterLearner(cfg, cfg.synthetic.features), cfg.synthetic, cfg.grpo.group_size

        @jax.jit
        def collect(params, key):
            kq, ka, ko = jax.random.split(key, 3)
            q = S.make_queries(kq, s.queries, s.steps, s.features)
            feats, mask, crit = (S.expand_groups(x, G) for x in (q.features, q.mask, q.critical))
            logits = learner.apply(params, feats)
            actions = jax.random.categorical(ka, logits).astype(jnp.int32)
            logp, _ = action_logp_entropy(logits, actions)
            correct, share = S.outcomes(ko, actions, crit, mask)
            rewards, _, adv = score_trajectories(S.reward_batch(correct, actions, mask), cfg)
            batch = {"features": feats, "actions": actions, "old_logp": logp * mask, "mask": mask,
                     "advantages": adv}
            return batch, {"reward": rewards.mean(), "accuracy": correct.mean(), "large_share": share.mean()}

        hist = run_training(learner, lambda p, key, k: collect(p, key), cfg, resume=resume, progress=False)
        return learner, hist


    register_world(get_world("synthetic").replace(name="plug_world", description="a plugin's world",
                                                  train_router=train, demo=None))
"""


@pytest.fixture()
def plugin_world(tmp_path, monkeypatch):
    """The plugin module ``roro_test_world_plugin`` (importable); its world and module removed afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "roro_test_world_plugin.py").write_text(textwrap.dedent(PLUGIN))
    yield "roro_test_world_plugin"
    WORLDS.pop("plug_world", None)
    sys.modules.pop("roro_test_world_plugin", None)


# ------------------------------------------------------------------------------------ the interface ---
@pytest.mark.parametrize("name", BUILTIN)
def test_every_registered_world_exposes_the_interface(name):
    assert set(BUILTIN) <= set(WORLDS)
    w = get_world(name)
    assert isinstance(w, World) and w.name == name and w.description
    assert {"correct", "large_share", "escalation_rate", "small_tokens", "large_tokens"} <= w.reward_fields
    assert REWARD_FIELDS[name] == w.reward_fields
    for what in FUNCTIONS:  # every entry point given as "module:function" names a real function
        fn = getattr(w, what)
        assert fn is None or callable(fn.resolve() if isinstance(fn, Lazy) else fn), (name, what)
    assert callable(w.require("train_router"))
    cfg = load_config(None, [f"world={name}"])
    q, key = w.queries_per_update(cfg)
    assert isinstance(q, int) and q >= 1 and OmegaConf.select(OmegaConf.structured(cfg), key) is not None
    assert w.settings(cfg) is getattr(cfg, w.section)
    if w.collect is not None:  # a stepwise world: engines, problems and a settings section for the pipeline
        for what in ("make_engines", "train_problems", "test_problems", "annotate"):
            assert getattr(w, what) is not None, (name, what)
        assert {"explore_problems", "queries_per_update", "test_problems"} <= set(vars(w.settings(cfg)))


def test_the_builtin_worlds_and_their_commands():
    have = {what: sorted(n for n in BUILTIN if getattr(get_world(n), what) is not None)
            for what in ("train_router", "collect", "evaluate", "demo")}
    assert have == {"train_router": sorted(BUILTIN), "collect": ["live", "toy"],
                    "evaluate": ["live", "replay", "toy"], "demo": ["synthetic", "toy"]}


def test_world_checks_its_functions():
    with pytest.raises(ValueError, match="module:function"):
        World("bad", train_router="no_colon")
    with pytest.raises(TypeError, match="world 'bad': collect must be a function"):
        World("bad", collect=3)
    w = World("lazy", train_router="pipelines.router_synthetic:train_router_synthetic")
    from pipelines.router_synthetic import train_router_synthetic

    assert isinstance(w.train_router, Lazy) and w.train_router.resolve() is train_router_synthetic
    with pytest.raises(WorldError, match=r"roro collect: world='lazy' is not available \(available: \['live', "
                                         r"'toy'\]\)"):
        w.require("collect")


def test_default_prompt_is_the_toy_prompt():
    """The rollout lost its toy branch; the toy world's prompt is the same text."""
    for p in toy.generate(5, seed=3):
        assert default_prompt(p) == toy.prompt_text(p) == get_world("toy").prompt_fn(None)(p)


# ---------------------------------------------------------------------------------------- the config ---
def test_config_world_choices_come_from_the_registry():
    with pytest.raises(ConfigError, match=r"unknown world 'mine'; registered: \['live', 'replay', 'synthetic', "
                                          r"'toy'\]"):
        load_config(None, ["world=mine"])
    register_world(get_world("synthetic").replace(name="mine"))
    try:
        assert load_config(None, ["world=mine"]).world == "mine"
    finally:
        WORLDS.pop("mine")


def test_register_reward_fields_keeps_the_world():
    before = get_world("synthetic")
    try:
        assert register_reward_fields("synthetic", [*before.reward_fields, "seconds"]) == REWARD_FIELDS["synthetic"]
        assert "seconds" in get_world("synthetic").reward_fields
        assert get_world("synthetic").train_router == before.train_router
        register_reward_fields("fields_only", ["correct"])  # a world known only by its fields
        assert get_world("fields_only").train_router is None
    finally:
        register_world(before)
        WORLDS.pop("fields_only", None)


# ----------------------------------------------------------------------------------------- the CLI ---
def test_unknown_world_is_one_error_line(capsys, one_error):
    assert main(["router", *SYN, "world=nope"]) == 2
    line = one_error()
    assert "config key 'world'" in line and "unknown world 'nope'" in line and "'synthetic'" in line


@pytest.mark.parametrize("command,what", [("collect", ["roro collect", "['live', 'toy']"]),
                                          ("eval", ["roro eval", "['live', 'replay', 'toy']"])])
def test_a_world_without_the_command_is_one_error_line(command, what, capsys, one_error):
    assert main([command, *SYN]) == 2
    assert one_error() == f"roro: error: {what[0]}: world='synthetic' is not available (available: {what[1]})"


def test_a_plugin_world_runs_roro_router_end_to_end(plugin_world, tmp_path, capsys, one_error):
    out = tmp_path / "run"
    assert main(["router", "--plugin", plugin_world, *SYN, "world=plug_world", f"out_dir={out}"]) == 0
    assert sys.modules[plugin_world].CALLS == ["plug_world"]  # the plugin's trainer ran, not the built-in one
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2] and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert f"update 2: reward {rows[-1]['reward']:.3f}" in capsys.readouterr().out
    assert "world: plug_world" in (out / "config.yaml").read_text()
    # it resumes like a built-in world (the run folder is the world's router_subdir under out_dir)
    assert main(["router", "--plugin", plugin_world, *SYN, "world=plug_world", f"out_dir={out}"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # the commands it has no entry point for say so, naming the world
    capsys.readouterr()
    assert main(["collect", "--plugin", plugin_world, *SYN, "world=plug_world", f"out_dir={out}"]) == 2
    assert one_error() == ("roro: error: roro collect: world='plug_world' is not available (available: "
                                 "['live', 'toy'])")
    assert main(["demo", "--plugin", plugin_world, *SYN, "world=plug_world", f"out_dir={out}"]) == 2
    assert one_error() == ("roro: error: roro demo: world='plug_world' is not available (available: "
                                 "['synthetic', 'toy'])")


def test_the_preflight_reads_the_plugin_worlds_facts(plugin_world, tmp_path, capsys, one_error):
    """The batch-split and reward-field checks use the plugin world's facts (here: the synthetic world's)."""
    base = ["router", "--plugin", plugin_world, *SYN, "world=plug_world", f"out_dir={tmp_path}"]
    assert main([*base, "synthetic.queries=3", "grpo.group_size=3", "grpo.minibatches=2"]) == 2
    assert "'synthetic.queries'=3 x 'grpo.group_size'=3 = 9 trajectories" in one_error()
    assert main([*base, "reward.weights.process=0.5"]) == 2
    assert "the synthetic world has no Judge" in one_error()
