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

A world declares its fields in :class:`roro_jax.worlds.base.World` (``reward_fields``);
:func:`register_reward_fields` replaces them for a registered world (or registers a world with only them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Iterable, Iterator

from roro_jax.worlds.base import WORLDS, World, register_world

__all__ = ["REWARD_FIELDS", "register_reward_fields", "reward_fields"]


class _RewardFields(Mapping):
    """world -> the fields its reward batch holds: a read-only view of the world registry
    (:data:`roro_jax.worlds.base.WORLDS`)."""

    kind = "world"

    def get(self, world: str) -> frozenset:  # type: ignore[override]  # an unknown world is an error
        return WORLDS.get(world).reward_fields

    def names(self) -> list[str]:
        return WORLDS.names()

    def __getitem__(self, world: str) -> frozenset:
        return self.get(world)

    def __contains__(self, world: object) -> bool:
        return world in WORLDS

    def __iter__(self) -> Iterator[str]:
        return iter(WORLDS)

    def __len__(self) -> int:
        return len(WORLDS)


REWARD_FIELDS = _RewardFields()


def register_reward_fields(world: str, fields: Iterable[str]) -> frozenset:
    """Declare the fields the reward batch of ``world`` holds (replacing any previous declaration)."""
    fields = frozenset(fields)
    w = WORLDS[world].replace(reward_fields=fields) if world in WORLDS else World(world, reward_fields=fields)
    register_world(w)
    return fields


def reward_fields(world: str) -> frozenset:
    """The fields the reward batch of ``world`` holds (UnknownNameError for an undeclared world)."""
    return REWARD_FIELDS.get(world)
