"""Structured configs: dataclasses validated by OmegaConf, loaded from YAML, overridden as ``key=value``.

``load_config("configs/toy.yaml", ["grpo.lr=1e-3", "seed=3"])`` returns a typed :class:`Config`.
An unknown key, a wrong type or a value outside its allowed choices raises :class:`ConfigError` naming
the key (and the file it came from).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from roro_jax.eval.config import EvalConfig
from roro_jax.pairs import PairsConfig
from roro_jax.rollout import RolloutConfig
from roro_jax.router.exploration import ExplorationConfig
from roro_jax.rubric.loop import RubricConfig
from roro_jax.types import InputError


# The registries whose names config keys take, read when a config is validated (not when this module is
# imported), so a name registered by user code (``--plugin`` / ``plugins:``, roro_jax.plugins) is accepted.
def _worlds():
    from roro_jax.worlds.base import WORLDS

    return WORLDS


def _toy_worlds():
    from roro_jax.worlds.variants import WORLDS

    return WORLDS


def _kl_estimators():
    from roro_jax.rl.losses import KL_ESTIMATORS

    return KL_ESTIMATORS


def _advantage_estimators():
    from roro_jax.rl.advantages import ADVANTAGE_ESTIMATORS

    return ADVANTAGE_ESTIMATORS


def _feature_families():
    from roro_jax.router.features import FEATURE_FAMILIES

    return FEATURE_FAMILIES


def _reward_terms():
    from roro_jax.rl.rewards import REWARD_TERMS

    return REWARD_TERMS


def _outcome_rules():
    from roro_jax.worlds.replay import OUTCOME_RULES

    return OUTCOME_RULES


def _policy_losses():
    from roro_jax.rl.losses import POLICY_LOSSES

    return POLICY_LOSSES


def _references():
    from roro_jax.rl.reference import REFERENCES

    return REFERENCES


def _registry(default, registry):
    """A name that must be registered in ``registry()`` (read at load time)."""
    return field(default=default, metadata={"registry": registry})


class ConfigError(InputError):
    """A config file or override is invalid; the message names the key (and where it was set)."""


def _choice(default, *choices):
    return field(default=default, metadata={"choices": choices})


def _at_least(default, lo, *, above: bool = False):
    """A number that must be ``>= lo`` (``> lo`` with ``above``); for a list, every item."""
    return field(default=default, metadata={"min": lo, "above": above})


def _counts(default, lo=1):
    return field(default_factory=lambda: list(default), metadata={"min": lo, "above": False})


def _registry_choices(f: dataclasses.Field):
    """A field's allowed values: fixed ``choices``, or the names a ``registry`` holds at load time (so a
    name registered by user code is accepted)."""
    if "choices" in f.metadata:
        return f.metadata["choices"]
    if "registry" in f.metadata:
        return tuple(sorted(f.metadata["registry"]()))
    return None


def _not_a_choice(f: dataclasses.Field, value, choices) -> str:
    """Why ``value`` is not allowed: a registry says what it holds (``unknown KL estimator 'k9'; registered:
    [...]``), fixed choices are listed."""
    kind = getattr(f.metadata["registry"](), "kind", None) if "registry" in f.metadata else None
    if kind:
        return f"unknown {kind} {value!r}; registered: {list(choices)}"
    return f"{value!r} is not one of {list(choices)}"


@dataclass
class RouterConfig:
    features: str = _registry("logprob", _feature_families)  # roro_jax.router.features
    hidden: list[int] = _counts([128, 128])
    activation: str = _choice("tanh", "tanh", "relu", "gelu", "silu")
    layer_norm: bool = False


@dataclass
class GRPOConfig:
    group_size: int = _at_least(8, 1)
    epochs: int = _at_least(4, 1)
    minibatches: int = _at_least(4, 1)
    lr: float = _at_least(3e-4, 0.0, above=True)
    max_grad_norm: float = _at_least(1.0, 0.0)
    clip_eps: float = _at_least(0.2, 0.0)
    clip_eps_high: Optional[float] = None
    beta: float = _at_least(0.0, 0.0)  # KL-to-reference weight (0 = no KL term)
    # the policy loss (roro_jax.rl.losses.POLICY_LOSSES): grpo (clipped ratio) | yours (register_policy_loss)
    loss: str = _registry("grpo", _policy_losses)
    # the reference policy of the KL term (roro_jax.rl.reference.REFERENCES): init (the initial router,
    # frozen; kept in the checkpoints) | none (then beta must be 0) | yours
    reference: str = _registry("init", _references)
    kl: str = _registry("k3", _kl_estimators)  # roro_jax.rl.losses.KL_ESTIMATORS: k1 | k2 | k3 | exact | yours
    agg: str = _choice("token-mean", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    entropy_coef: float = _at_least(0.0, 0.0)
    # the advantage estimator (roro_jax.rl.advantages.ADVANTAGE_ESTIMATORS): group | batch | none | rloo | yours
    adv_scale: str = _registry("group", _advantage_estimators)
    adv_eps: float = _at_least(1e-6, 0.0)


@dataclass
class RewardConfig:
    # reward term name -> weight; any term of roro_jax.rl.rewards' registry (yours too: reward.weights.NAME=w)
    weights: dict[str, float] = field(default_factory=lambda: {"outcome": 1.0, "cost": 0.3, "process": 0.0},
                                      metadata={"key_registry": _reward_terms})
    combine: str = _choice("sum_then_normalize", "sum_then_normalize", "normalize_then_sum")
    # what scores the process term (pipelines.rubric.PROCESS_SCORERS): judge (RoRo) | no_rubric_judge | rule
    process_scorer: str = "judge"


@dataclass
class ParallelConfig:
    mode: str = _choice("single", "single", "shard_map", "pmap", "jit_sharded")
    devices: int = _at_least(0, 0)  # 0 = all visible devices (with several processes: all devices of all processes)
    # multi-process / multi-host (roro_jax.distributed); None = from RORO_COORDINATOR / RORO_NUM_PROCESSES /
    # RORO_PROCESS_ID, else one process. coordinator: "host:port" of process 0, or "auto" (cluster detection)
    coordinator: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # None = <out_dir>/checkpoints
    every: int = _at_least(1, 1)  # save after updates every, 2*every, ... (and after the last update)
    keep: int = _at_least(3, 1)
    # resume a run whose saved config (<out_dir>/config.yaml) differs in training keys (--allow-config-change)
    allow_config_change: bool = False


@dataclass
class LoggingConfig:
    """Where the training scalars go besides ``<out_dir>/metrics.jsonl``."""

    # also write every metrics row to TensorBoard (needs the extra: pip install 'roro_jax[tensorboard]')
    tensorboard: bool = False
    tensorboard_dir: Optional[str] = None  # None = <out_dir>/tensorboard


@dataclass
class TrainConfig:
    updates: int = _at_least(50, 0)


@dataclass
class SyntheticConfig:
    """The built-in synthetic routing batch (`roro demo world=synthetic`, `configs/router_synthetic.yaml`)."""

    queries: int = _at_least(64, 1)
    steps: int = _at_least(16, 1)
    features: int = _at_least(32, 1)


@dataclass
class ReplayConfig:
    """The replay world (recorded episodes; outcomes of mixed routes are estimates)."""

    # None = <shared data>/episodes/math500_qwen3-1.7b_qwen3-14b.jsonl (read in place, never copied)
    episodes: Optional[str] = None
    # extra held-out sets evaluated after training (names or paths), e.g. the AIME 2025 episodes
    extra_test: list[str] = field(default_factory=lambda: ["aime2025_qwen3-1.7b_qwen3-14b.jsonl"])
    outcome_rule: str = _registry("last_writer", _outcome_rules)  # roro_jax.worlds.replay.OUTCOME_RULES
    train_frac: float = 0.6
    split_seed: int = 0  # the train/test split of the episodes (fixed across training seeds)
    queries_per_update: int = _at_least(32, 1)


@dataclass
class ToyWorldConfig:
    """The embedded toy world: the shipped toy models (``roro_jax/assets/toy``) on toy arithmetic."""

    # which toy world (roro_jax.worlds.variants): control (the shipped easy pair) | lucky | sparse
    variant: str = _registry("control", _toy_worlds)
    train_problems: int = _at_least(512, 1)  # pool of training problems (train split)
    test_problems: int = _at_least(200, 1)  # held-out problems (test split) for evaluation
    explore_problems: int = _at_least(96, 1)  # problems routed by the exploratory policies (stage 1: pairs)
    queries_per_update: int = _at_least(16, 1)
    problem_seed: int = 0
    max_batch: int = _at_least(64, 1)  # Flax engine batch (the only compiled batch shape)
    prompt_bucket: int = _at_least(64, 1)  # smallest prompt-length bucket (a toy prompt plus all its steps fits in 64 tokens)
    # how routed generation runs: host (roro_jax.rollout, an engine call per step) | fused (one jitted program
    # per batch, roro_jax.engines.fused_routing; same trajectories, policies without a device version use host)
    routing: str = _choice("host", "host", "fused")
    fused_batch: int = _at_least(256, 8)  # most rows per fused program


@dataclass
class LiveWorldConfig:
    """Real models behind ``engines`` (vLLM servers in real use) on a shipped benchmark (``roro eval``)."""

    benchmark: str = "math500"  # shipped name or JSONL path (roro_jax.tasks.load_benchmark)
    test_benchmark: Optional[str] = None  # None: the held-out part of ``benchmark``
    train_frac: float = 0.5
    split_seed: int = 0
    explore_problems: int = _at_least(64, 1)  # training problems routed by the exploratory policies (and trained on)
    test_problems: int = _at_least(0, 0)  # 0 = every held-out problem
    queries_per_update: int = _at_least(16, 1)
    prompt_template: str = "{question}\n\n"  # str.format with the problem's fields (put a chat template here)


@dataclass
class EngineConfig:
    """Arguments of ``roro_jax.engines.make_engine(kind, **rest)`` for one role (small or large model).

    ``openai_server``: ``model`` (served name), ``endpoints`` (base URLs), ``tokenizer_path`` (HF folder or hub
    id), ``n_params`` (FLOPs), ``concurrency``, ``timeout`` (s), ``max_retries``, ``backoff``/``max_backoff``
    (s), ``extra_body`` (more vLLM fields). ``flax``/``vllm_offline``: ``model`` is a model folder.
    """

    kind: str = _choice("flax", "flax", "openai_server", "vllm_offline")
    model: str = ""
    endpoints: list[str] = field(default_factory=list)
    tokenizer_path: Optional[str] = None
    n_params: Optional[float] = None
    concurrency: int = _at_least(64, 1)
    timeout: float = _at_least(120.0, 0.0, above=True)
    max_retries: int = _at_least(4, 0)
    backoff: float = 0.5
    max_backoff: float = 8.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def make_kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``make_engine(self.kind, **kw)`` takes for this kind."""
        if self.kind == "openai_server":
            return {"model": self.model, "endpoints": list(self.endpoints), "tokenizer_path": self.tokenizer_path,
                    "n_params": self.n_params, "concurrency": self.concurrency, "timeout": self.timeout,
                    "max_retries": self.max_retries, "backoff": self.backoff, "max_backoff": self.max_backoff,
                    "extra_body": dict(self.extra_body)}
        return {"model": self.model, "n_params": self.n_params}


@dataclass
class EnginesConfig:
    small: EngineConfig = field(default_factory=EngineConfig)
    large: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class SweepConfig:
    """Operating-point sweeps for evaluation."""

    lambda_c: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.8])
    random_rates: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    gammas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])  # STEER
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class Config:
    world: str = _registry("synthetic", _worlds)  # roro_jax.worlds.base.WORLDS: synthetic | replay | toy | live
    # modules imported before the config is validated (they register reward terms, KL estimators, ...;
    # roro_jax.plugins); the command line adds more with --plugin
    plugins: list[str] = field(default_factory=list)
    seed: int = 0
    out_dir: str = "runs/demo"
    router: RouterConfig = field(default_factory=RouterConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    toy: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    live: LiveWorldConfig = field(default_factory=LiveWorldConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engines: EnginesConfig = field(default_factory=EnginesConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    rubric: RubricConfig = field(default_factory=RubricConfig)


def _where(key: str, layers) -> str:
    """The last layer (file or command line) that sets ``key``, else "default"."""
    for layer, where in reversed(layers):
        if OmegaConf.select(layer, key, default=None) is not None:
            return where
    return "default"


def _check_choices(obj: Any, layers, prefix: str = "") -> None:
    """Allowed choices and lower bounds (``_choice`` / ``_at_least`` metadata), recursively."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        choices = _registry_choices(f)
        if choices and value not in choices:
            raise ConfigError(f"config key '{key}' ({_where(key, layers)}): {_not_a_choice(f, value, choices)}")
        if "key_registry" in f.metadata and isinstance(value, dict):
            reg = f.metadata["key_registry"]()
            for name in value:
                if name not in reg:
                    raise ConfigError(f"config key '{key}.{name}' ({_where(f'{key}.{name}', layers)}): unknown "
                                      f"{reg.kind} {name!r}; registered: {reg.names()}")
        lo = f.metadata.get("min")
        if lo is not None and value is not None:
            above = f.metadata.get("above", False)
            for v in value if isinstance(value, list) else [value]:
                if (v <= lo) if above else (v < lo):
                    raise ConfigError(f"config key '{key}' ({_where(key, layers)}): {value!r}: must be "
                                      f"{'>' if above else '>='} {lo:g}")
        _check_choices(value, layers, key + ".")


def _list_hint(e: OmegaConfBaseException, key: str | None, layer) -> str:
    """For a scalar given to a list key (``router.hidden=128``): how to write it as a list."""
    if not key or "ListConfig" not in str(e):
        return ""
    value = OmegaConf.select(layer, key, default=None) if layer is not None else None
    if value is None or isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return ""
    return f" (a list: write {key}=[{value}])"


def _wrap(e: OmegaConfBaseException, where: str, cfg=None, layer=None) -> ConfigError:
    key = getattr(e, "full_key", None)
    if not key and cfg is not None:  # e.g. a section given a scalar: find the top-level key that fails
        for k in layer:
            try:
                OmegaConf.merge(cfg, {k: layer[k]})
            except OmegaConfBaseException:
                key = k
                break
    msg = str(e).splitlines()[0]
    head = f"config key '{key}'" if key else "config"
    return ConfigError(f"{head} ({where}): {msg}{_list_hint(e, key, layer)}")


def _open_dicts(node) -> None:
    """Dict fields whose keys a registry checks (``reward.weights``) accept new keys (a registered term);
    every other node stays closed (an unknown key is an error)."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    for f in dataclasses.fields(schema):
        child = node._get_node(f.name)
        if "key_registry" in f.metadata:
            OmegaConf.set_struct(child, False)
        elif isinstance(child, DictConfig):
            _open_dicts(child)


def _import_plugins(cfg, where: str) -> None:
    from roro_jax.plugins import load_plugins

    try:
        load_plugins(list(cfg.plugins))
    except InputError as e:
        raise ConfigError(f"config key 'plugins' ({where}): {e}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), schema=Config):
    """Load ``schema`` defaults, merge a YAML file, then ``key=value`` overrides; import the modules the
    ``plugins`` key names; validate; return the dataclass."""
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    _open_dicts(base)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            layer = OmegaConf.load(path)
        except Exception as e:  # YAML syntax errors (their text names the line): one line
            raise ConfigError(f"config file {path}: " + "; ".join(x.strip() for x in str(e).splitlines())) from None
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"config file {path}: the top level must be a mapping of keys, got a list")
        layers.append((layer, str(path)))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad}")
    if overrides:
        layers.append((OmegaConf.from_dotlist(list(overrides)), "command line"))
    cfg = base
    for layer, where in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise _wrap(e, where, cfg, layer) from None
    if "plugins" in cfg:  # before validation: a plugin's names are accepted below
        _import_plugins(cfg, _where("plugins", layers))
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _wrap(e, "resolved") from None
    except ValueError as e:  # a section's own __post_init__ validation (names the field)
        raise ConfigError(f"config ({', '.join(w for _, w in layers) or 'defaults'}): {e}") from None
    _check_choices(obj, layers)
    _check_reference(obj, layers)
    return obj


def _check_reference(obj, layers) -> None:
    """``grpo.beta > 0`` needs a reference policy: with ``grpo.reference=none`` the KL term cannot apply."""
    g = getattr(obj, "grpo", None)
    if isinstance(g, GRPOConfig) and g.beta > 0 and g.reference == "none":
        raise ConfigError(f"config key 'grpo.beta' ({_where('grpo.beta', layers)}): {g.beta:g} weights the KL to a "
                          "reference policy, but grpo.reference=none gives none; set grpo.reference=init (the "
                          "initial router, frozen) or grpo.beta=0")


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
