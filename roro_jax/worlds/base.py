"""One interface for the routing worlds: what the ``roro`` commands, the pipelines and the preflight checks
ask of a world, and one registry of them (the config's ``world`` picks one).

A :class:`World` is a frozen record of plain functions. Each ``roro`` command calls one entry point
(``train_router``, ``collect``, ``evaluate``, ``demo``); a world that lacks it is one ``roro: error:`` line
naming the command and the world. The stepwise pipeline (:mod:`pipelines.roro`) reads the world's inputs
(``make_engines``, ``train_problems`` / ``validation_problems`` / ``test_problems``, ``prompt_fn``,
``annotate``, its config ``section``); the preflight reads its facts (``reward_fields``,
``queries_per_update``, ``router_subdir``, ``router_in_features``, ``feature_families``,
``no_process_scorer``, ``no_process_label``).

A function may be given as a ``"module:function"`` string (:class:`Lazy`): it is imported at its first
call, so the library imports no pipeline module when it loads. A world of your own, in a plugin module
(:mod:`roro_jax.plugins`)::

    from roro_jax.worlds import get_world, register_world

    def train(cfg, *, resume=True): ...  # -> (learner, history), e.g. roro_jax.rl.trainer.run_training

    register_world(get_world("synthetic").replace(name="mine", train_router=train, demo=None))

then ``roro router --plugin my_mod world=mine`` (``tests/worlds/test_world_registry.py`` has a whole one).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from roro_jax.registry import Registry
from roro_jax.types import InputError

__all__ = ["COMMANDS", "Lazy", "World", "WorldError", "WORLDS", "get_world", "register_world"]

Fn = Callable[..., Any]


class WorldError(InputError):
    """A world lacks what a command needs (``roro`` prints one ``roro: error:`` line)."""


class Lazy:
    """The function ``"module:function"``, imported at its first call."""

    def __init__(self, ref: str):
        mod, sep, name = ref.partition(":")
        if not (mod and sep and name):
            raise ValueError(f"a lazy function is 'module:function', got {ref!r}")
        self.ref = ref
        self._fn: Fn | None = None

    def resolve(self) -> Fn:
        if self._fn is None:
            mod, _, name = self.ref.partition(":")
            self._fn = getattr(importlib.import_module(mod), name)
        return self._fn

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other) -> bool:
        return isinstance(other, Lazy) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def __repr__(self) -> str:
        return f"Lazy({self.ref!r})"


# entry point -> the command that calls it (named in the error when a world lacks it)
COMMANDS = {"train_router": "roro router", "collect": "roro collect", "evaluate": "roro eval", "demo": "roro demo"}
_FUNCTIONS = ("train_router", "collect", "evaluate", "demo", "quick_overrides", "make_engines", "train_problems",
              "validation_problems", "test_problems", "prompt_fn", "annotate", "queries_per_update",
              "router_in_features")


@dataclass(frozen=True)
class World:
    """A routing world. Every function takes the resolved config (:class:`roro_jax.config.Config`) first;
    ``None`` means the world does not have it. Functions may be ``"module:function"`` strings."""

    name: str
    description: str = ""
    # the fields its reward batch holds (roro_jax.worlds.reward_fields)
    reward_fields: frozenset = frozenset()
    # --- the roro commands
    train_router: Optional[Fn] = None  # (cfg, *, resume) -> (learner, history): roro router
    collect: Optional[Fn] = None  # cfg -> the trajectory file: roro collect
    evaluate: Optional[Fn] = None  # cfg -> {name: {"report": path, ...}}: roro eval
    demo: Optional[Fn] = None  # (cfg, *, quick, progress) -> results: roro demo
    quick_overrides: Optional[Fn] = None  # () -> the key=value overrides of `roro demo --quick`
    # --- the stepwise pipeline's inputs (pipelines.roro, pipelines.toy)
    make_engines: Optional[Fn] = None  # cfg -> engines with .small / .large (StepEngines)
    train_problems: Optional[Fn] = None  # cfg -> [Problem]
    validation_problems: Optional[Fn] = None  # (cfg, n) -> [Problem], disjoint from the training pool
    test_problems: Optional[Fn] = None  # cfg -> [Problem] (held out)
    prompt_fn: Optional[Fn] = None  # cfg -> (Problem -> prompt text); None: roro_jax.rollout.default_prompt
    annotate: Optional[Fn] = None  # (Problem, steps) -> dict added to a routed trajectory's meta
    section: Optional[str] = None  # the config section of its settings (explore_problems, ...): cfg.<section>
    # --- facts the preflight checks read
    queries_per_update: Optional[Fn] = None  # cfg -> (queries routed per update, the key that sets it)
    router_subdir: str = ""  # where `roro router` trains, under out_dir, when stages run before it (process reward)
    router_in_features: Optional[Fn] = None  # cfg -> the router's input width (None: router.features' width)
    # the router.features families the world computes (None: router.features does not apply or any family does)
    feature_families: Optional[frozenset] = None
    # command (None: every training command) -> why reward.weights.process > 0 cannot apply there
    no_process_scorer: Mapping[Optional[str], str] = field(default_factory=dict)
    # pairs.process_label -> why the world's pairs cannot be ordered by it (roro_jax.pairs.PROCESS_LABELS)
    no_process_label: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for name in _FUNCTIONS:
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Lazy(value))
            elif value is not None and not callable(value):
                raise TypeError(f"world {self.name!r}: {name} must be a function or 'module:function', "
                                f"got {value!r}")
        object.__setattr__(self, "reward_fields", frozenset(self.reward_fields))
        if self.feature_families is not None:
            object.__setattr__(self, "feature_families", frozenset(self.feature_families))

    def require(self, what: str, command: str | None = None) -> Fn:
        """The function ``what``; a :class:`WorldError` naming the command and the world, and the worlds
        that have it, when this world lacks it."""
        fn = getattr(self, what)
        if fn is None:
            have = sorted(n for n, w in WORLDS.items() if getattr(w, what) is not None)
            raise WorldError(f"{command or COMMANDS.get(what, what)}: world={self.name!r} is not available "
                             f"(available: {have})")
        return fn

    def settings(self, cfg):
        """The world's config section (``cfg.toy``, ``cfg.live``, ...)."""
        if self.section is None:
            raise WorldError(f"world {self.name!r} has no config section (World.section)")
        return getattr(cfg, self.section)

    def replace(self, **changes) -> "World":
        return dataclasses.replace(self, **changes)


# name -> World; the config's ``world`` picks one
WORLDS: Registry[World] = Registry("world")


def register_world(world: World) -> World:
    """Add ``world`` under ``world.name`` (replacing any previous one); then ``world=<name>``."""
    if not isinstance(world, World):
        raise TypeError(f"register_world takes a World, got {type(world).__name__}")
    return WORLDS.add(world.name, world)


def get_world(name: str) -> World:
    """The world ``name`` (:class:`~roro_jax.registry.UnknownNameError` listing the registered ones)."""
    return WORLDS.get(name)


# ------------------------------------------------------------------------------ the built-in worlds ---
_COUNTS = frozenset({"correct", "large_share", "escalation_rate", "small_tokens", "large_tokens"})


def _stepwise_queries(cfg) -> tuple[int, str]:
    s = get_world(cfg.world).settings(cfg)
    return min(s.queries_per_update, s.explore_problems), f"{cfg.world}.queries_per_update"


def _prm_width(cfg) -> int:
    from roro_jax.router.features import get_family

    return get_family("prm").dim


register_world(World(
    "synthetic", "a routing batch made in JAX (smoke demo, tests, benchmarks); no text, no Judge",
    reward_fields=_COUNTS,  # roro_jax.worlds.synthetic.reward_batch
    train_router="pipelines.router_synthetic:train_router_synthetic", demo="pipelines.demo:synthetic_demo",
    section="synthetic", queries_per_update=lambda cfg: (cfg.synthetic.queries, "synthetic.queries"),
    router_in_features=lambda cfg: cfg.synthetic.features,
    no_process_scorer={None: "the synthetic world has no Judge (use world=toy, or set reward.weights.process=0)"},
    no_process_label={"checkpoints": "the synthetic world's routes have no step texts to check"}))

register_world(World(
    "replay", "recorded episodes (real model outputs with PRM scores); mixed routes' outcomes are estimates",
    reward_fields=_COUNTS | {"process"},  # RouteBatch.reward_batch
    train_router="pipelines.replay:train_router_replay", evaluate="pipelines.replay:run_replay",
    section="replay",
    queries_per_update=lambda cfg: (cfg.replay.queries_per_update, "replay.queries_per_update"),
    router_in_features=_prm_width,
    no_process_scorer={"router": "`roro router` in the replay world trains without the rubric stage (`roro eval` "
                                 "runs it); set reward.weights.process=0"},
    no_process_label={"checkpoints": "recorded episodes have no reference steps to check a route against"}))

_STEPWISE = World(
    "toy", "the shipped toy models (roro_jax/assets/toy, toy.variant) on toy arithmetic, Flax engines on a CPU",
    reward_fields=_COUNTS | {"process"},  # roro_jax.rl.stream.reward_inputs + the process scorer
    train_router="pipelines.roro:train_router", collect="pipelines.roro:collect_stage",
    evaluate="pipelines.roro:eval_pipeline", demo="pipelines.demo:toy_demo",
    quick_overrides="pipelines.roro:quick_overrides",
    make_engines="pipelines.toy:make_engines", train_problems="pipelines.toy:train_problems",
    validation_problems="pipelines.toy:validation_problems", test_problems="pipelines.toy:test_problems",
    prompt_fn="pipelines.toy:prompt_format", annotate="roro_jax.tasks.toy:trajectory_meta", section="toy",
    queries_per_update=_stepwise_queries, router_subdir="router",
    feature_families={"logprob"})  # roro_jax.rollout / fused_routing: from the engines' top-k log-probs
register_world(_STEPWISE)

register_world(_STEPWISE.replace(
    name="live", description="real models behind engines.small / engines.large (e.g. vLLM servers) on a shipped "
                             "benchmark",
    demo=None, quick_overrides=None, make_engines="pipelines.live:make_engines",
    train_problems="pipelines.live:train_problems", validation_problems=None,
    test_problems="pipelines.live:test_problems", prompt_fn="pipelines.live:prompt_fn",
    annotate="pipelines.live:trajectory_meta", section="live",
    no_process_label={"checkpoints": "a live benchmark's problems have no reference steps to check a route against "
                                     "(only toy problems do)"}))
