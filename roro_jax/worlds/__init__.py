"""Routing worlds: where the small and large models' steps come from.

- :mod:`roro_jax.worlds.base`: the :class:`World` interface and the registry of worlds (``world=<name>``:
  ``synthetic``, ``replay``, ``toy``, ``live`` and any a plugin registers);
- :mod:`roro_jax.worlds.replay`: recorded episodes (real model outputs with PRM scores); the outcome
  of a mixed route is an explicit estimate.
"""

from roro_jax.worlds.base import WORLDS, World, WorldError, get_world, register_world
from roro_jax.worlds.replay import (OUTCOME_RULES, Episode, EpisodeFormatError, ReplayWorld, RouteBatch,
                                    load_episodes, register_outcome_rule)

__all__ = ["OUTCOME_RULES", "WORLDS", "Episode", "EpisodeFormatError", "ReplayWorld", "RouteBatch", "World",
           "WorldError", "get_world", "load_episodes", "register_outcome_rule", "register_world"]
