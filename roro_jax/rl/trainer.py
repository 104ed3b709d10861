"""The router learner: owns the policy's graph, the train state, the jitted update and checkpoints.

The learner knows nothing about where trajectories come from: the caller hands it padded routing
batches (``roro_jax.types.pad_trajectories`` + advantages) and receives metrics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from roro_jax.rl.checkpoint import Checkpointer
from roro_jax.rl.update import DATA, init_state, make_optimizer, make_update, policy_logp
from roro_jax.router.mlp import RouterMLP, escalate_prob, make_router


def make_mesh(devices: int = 0) -> Mesh:
    devs = jax.devices()
    if devices:
        if devices > len(devs):
            raise ValueError(f"parallel.devices={devices} but only {len(devs)} devices are visible")
        devs = devs[:devices]
    return Mesh(np.array(devs), (DATA,))


class RouterLearner:
    """GRPO learner for a :class:`RouterMLP`.

    Args:
      cfg: the full ``Config`` (uses ``router``, ``grpo``, ``parallel``, ``seed``).
      in_features: router input width.
      escalate_bias: initial escalate logit bias.
    """

    def __init__(self, cfg, in_features: int, escalate_bias: float = 0.0):
        self.cfg = cfg
        model: RouterMLP = make_router(cfg.router, in_features, seed=cfg.seed, escalate_bias=escalate_bias)
        self.graphdef, params = nnx.split(model)
        self.tx = make_optimizer(cfg.grpo.lr, cfg.grpo.max_grad_norm)
        self.state = init_state(params, self.tx)
        mode = cfg.parallel.mode
        self.mesh = make_mesh(cfg.parallel.devices) if mode in ("shard_map", "jit_sharded") else None
        self._update = make_update(self.graphdef, self.tx, cfg.grpo, mode=mode, mesh=self.mesh)
        self._logits = jax.jit(self.apply)
        self._logp = jax.jit(lambda p, x, a: policy_logp(self.graphdef, p, x, a)[0])

    def apply(self, params, features):
        """Pure ``logits = router(features)`` for use inside the caller's own jitted code."""
        return nnx.merge(self.graphdef, params)(features)

    @property
    def params(self):
        return self.state.params

    @property
    def step(self) -> int:
        return int(self.state.step)

    def update(self, batch: dict[str, Any], rng) -> dict[str, float]:
        """One GRPO update (epochs × minibatches); returns the metrics as a dict of device scalars."""
        self.state, metrics = self._update(self.state, batch, rng)
        return metrics

    def logits(self, features, params=None):
        return self._logits(self.state.params if params is None else params, features)

    def escalate_prob(self, features, params=None):
        return escalate_prob(self.logits(features, params))

    def logp(self, features, actions, params=None):
        return self._logp(self.state.params if params is None else params, features, actions)

    def model(self) -> RouterMLP:
        return nnx.merge(self.graphdef, self.state.params)

    # ------------------------------------------------------------------------------- checkpoints ---
    def save(self, ckpt: Checkpointer, meta: dict | None = None, force: bool = False) -> bool:
        return ckpt.maybe_save(self.step, self.state, meta, force=force)

    def restore(self, ckpt: Checkpointer, step: int | None = None) -> dict:
        state, meta = ckpt.restore(self.state, step)
        self.state = jax.tree.map(jnp.asarray, state)
        return meta
