"""The reward-input contract: which fields each world's reward batch holds.

A reward term (:mod:`roro_jax.rl.rewards`) is a function of a *reward batch*, a mapping of ``[N]`` arrays
(one entry per trajectory). Each world fills the batch with the fields below, and a term declares the
fields it reads (``register_reward("brevity", needs=("small_tokens",))``). A term with a non-zero weight
that needs a field the configured world lacks is a config error before anything compiles
(:func:`roro_jax.preflight.check_reward_fields`), naming the term, the field and the world.

Fields (float32 ``[N]``):

- ``correct``: 1 if the final answer is right, 0 if wrong (the replay world: estimated for mixed routes);
- ``large_share``: the large model's share of the kept tokens, in [0, 1] (the ``cost`` term is minus it);
- ``escalation_rate``: escalated steps / steps;
- ``small_tokens`` / ``large_tokens``: tokens written by each model (the synthetic world has no text: one
  step counts as one token, so ``large_share = large_tokens / (small_tokens + large_tokens)``);
- ``process``: the process scorer's score in [0, 1] (only when ``reward.weights.process > 0`` and the world
  has a scorer: the Judge in the toy and live worlds, and in the replay world under ``roro eval``).

A world added by user code registers its fields with :func:`register_reward_fields`.
"""

from __future__ import annotations

from typing import Iterable

from roro_jax.registry import Registry

__all__ = ["REWARD_FIELDS", "register_reward_fields", "reward_fields"]

_COUNTS = frozenset({"correct", "large_share", "escalation_rate", "small_tokens", "large_tokens"})

# world (the config's ``world``) -> the fields its reward batch holds
REWARD_FIELDS: Registry[frozenset] = Registry("world")


def register_reward_fields(world: str, fields: Iterable[str]) -> frozenset:
    """Declare the fields the reward batch of ``world`` holds (replacing any previous declaration)."""
    return REWARD_FIELDS.add(world, frozenset(fields))


def reward_fields(world: str) -> frozenset:
    """The fields the reward batch of ``world`` holds (UnknownNameError for an undeclared world)."""
    return REWARD_FIELDS.get(world)


register_reward_fields("synthetic", _COUNTS)  # pipelines.router_synthetic: roro_jax.worlds.synthetic.reward_batch
register_reward_fields("replay", _COUNTS | {"process"})  # pipelines.replay: RouteBatch.reward_batch
register_reward_fields("toy", _COUNTS | {"process"})  # pipelines.toy.reward_batch (roro_jax.rl.stream.reward_inputs)
register_reward_fields("live", _COUNTS | {"process"})  # the same rollout as toy, on real engines
