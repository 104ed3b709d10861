"""The reference policy of the router's KL term (``grpo.beta > 0``): what ``grpo.reference`` names.

A reference is ``fn(init_params) -> ref_params | None``: it gets the router's initial parameters and
returns the parameters of the frozen reference (a pytree of the same structure), or ``None`` for no
reference. The learner keeps the reference in its train state (``TrainState.ref_params``), so it is saved
in every checkpoint and a resumed run keeps the same reference; the jitted update computes the reference
log-probs of the taken actions from the batch's features (no host round trip) and adds ``beta`` times the
``grpo.kl`` estimator to the loss, in every parallel mode.

- ``init`` (default): the router's initial parameters, frozen.
- ``none``: no reference; then ``grpo.beta`` must be 0 (a config error otherwise).

Add one with ``register_reference("mine", fn)`` (e.g. parameters read from another run's checkpoint),
then ``grpo.reference=mine``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from roro_jax.registry import Registry

__all__ = ["REFERENCES", "reference_params", "register_reference"]

# name -> ``fn(init_params) -> ref_params | None``; ``grpo.reference`` picks one by name
REFERENCES: Registry[Callable] = Registry("reference policy")


def register_reference(name: str, fn: Callable | None = None):
    """Add a reference ``fn(init_params) -> ref_params | None`` as ``name`` (then ``grpo.reference=name``):
    ``register_reference("mine", fn)``, or as a decorator, ``@register_reference("mine")``."""
    if fn is None:
        return REFERENCES.register(name)
    return REFERENCES.add(name, fn)


@register_reference("init")
def frozen_init(init_params):
    """The initial parameters, copied (own buffers: the update donates the state that holds both)."""
    return jax.tree.map(jnp.copy, init_params)


@register_reference("none")
def no_reference(init_params):
    return None


def reference_params(grpo_cfg, init_params) -> Any:
    """The reference parameters the state carries under ``grpo_cfg``: ``None`` when ``beta == 0`` (no KL
    term, so nothing to carry: the state, and its checkpoints, are as without a reference)."""
    if not grpo_cfg.beta:
        return None
    ref = REFERENCES.get(grpo_cfg.reference)(init_params)
    if ref is None:
        raise ValueError(f"grpo.beta={grpo_cfg.beta:g} needs a reference policy, but grpo.reference="
                         f"{grpo_cfg.reference!r} gives none")
    return ref
