"""Routing worlds: where the small and large models' steps come from.

- :mod:`roro_jax.worlds.replay`: recorded episodes (real model outputs with PRM scores); the outcome
  of a mixed route is an explicit estimate.
"""

from roro_jax.worlds.replay import (OUTCOME_RULES, Episode, EpisodeFormatError, ReplayWorld, RouteBatch,
                                    load_episodes, register_outcome_rule)

__all__ = ["OUTCOME_RULES", "Episode", "EpisodeFormatError", "ReplayWorld", "RouteBatch", "load_episodes",
           "register_outcome_rule"]
