"""Per-row randomness that does not depend on the batch a row is in: SplitMix64 uniforms keyed by a row's
seed (and a salt per use), so a routing decision is reproducible whatever the batching."""
from __future__ import annotations

from typing import Any

import numpy as np

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(_MASK64)
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(_MASK64)
    return x ^ (x >> np.uint64(31))


def hash_uniforms(seeds: np.ndarray, salt: int) -> np.ndarray:
    """Uniforms in [0, 1), one per seed, a pure function of ``(seed, salt)`` (SplitMix64)."""
    with np.errstate(over="ignore"):
        s = np.asarray(seeds).astype(np.uint64)
        h = _splitmix64(s ^ _splitmix64(np.uint64(int(salt) & _MASK64) + np.zeros_like(s)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def row_uniforms(obs: Any, rng: np.random.Generator, salt: int = 0) -> np.ndarray:
    """One uniform per row: from ``obs.row_seeds`` when the rollout provides them (so a row's draw does not
    depend on the other rows of its batch), else ``rng.random(N)``."""
    seeds = getattr(obs, "row_seeds", None)
    if seeds is not None:
        seeds = np.asarray(seeds)
        if seeds.shape != (len(obs),):
            raise ValueError(f"obs.row_seeds has shape {seeds.shape}, expected ({len(obs)},)")
        return hash_uniforms(seeds, salt)
    return rng.random(len(obs))
