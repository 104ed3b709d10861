import pytest

from roro_jax.config import Config, ConfigError, load_config, to_yaml
from roro_jax.paths import REPO_ROOT


def test_defaults_and_overrides():
    cfg = load_config(None, ["grpo.lr=1e-3", "reward.weights.process=0.5", "router.hidden=[16,8]"])
    assert isinstance(cfg, Config)
    assert cfg.grpo.lr == 1e-3 and cfg.reward.weights["process"] == 0.5 and cfg.router.hidden == [16, 8]
    assert cfg.grpo.epochs == 4  # untouched default


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("grpo:\n  lr: 0.01\n  epochs: 2\nseed: 7\n")
    cfg = load_config(f, ["grpo.epochs=3"])
    assert (cfg.grpo.lr, cfg.grpo.epochs, cfg.seed) == (0.01, 3, 7)


@pytest.mark.parametrize("override,match", [
    ("grpo.lrr=1", "config key 'grpo.lrr'.*not in 'GRPOConfig'"),
    ("grpo.lr=abc", "config key 'grpo.lr'.*could not be converted"),
    ("grpo.kl=k9", r"config key 'grpo.kl'.*unknown KL estimator 'k9'; registered: \['exact', 'k1', 'k2', 'k3'\]"),
    ("reward.weights.brevity=0.1", r"config key 'reward.weights.brevity'.*unknown reward term 'brevity'; registered:"),
    ("grpo.adv_scale=gae", r"config key 'grpo.adv_scale'.*unknown advantage estimator 'gae'; registered: \['batch', "
                           r"'group', 'none', 'rloo'\]"),
    ("parallel.mode=dp", "config key 'parallel.mode'"),
    ("router.hidden=[1,x]", "router.hidden"),
    ("pairs.similar_cost=0.9", "similar_cost"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_registered_reward_term_is_a_weight_key():
    from roro_jax.rl.rewards import REWARD_TERMS, register_reward

    register_reward("brevity_cfg_test", needs=("small_tokens",))(lambda b: -b["small_tokens"])
    try:
        cfg = load_config(None, ["reward.weights.brevity_cfg_test=0.1"])
        assert cfg.reward.weights == {"outcome": 1.0, "cost": 0.3, "process": 0.0, "brevity_cfg_test": 0.1}
        with pytest.raises(ConfigError, match="reward.weights.brevity_cfg_test.*could not be converted"):
            load_config(None, ["reward.weights.brevity_cfg_test=abc"])
    finally:
        REWARD_TERMS.pop("brevity_cfg_test")
    # other sections stay closed to unknown keys
    with pytest.raises(ConfigError, match="grpo.brevity"):
        load_config(None, ["grpo.brevity=0.1"])


def test_bad_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("grpo:\n  nope: 1\n")
    with pytest.raises(ConfigError, match=r"grpo.nope.*bad.yaml"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["grpo.lr"])


def test_every_shipped_config_loads():
    files = sorted((REPO_ROOT / "configs").glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config(f)
        assert load_config(None, []) != cfg or f.name == "default.yaml"
        assert to_yaml(cfg)
