"""Low-rank adapters on the decoder's attention and MLP projections.

``add_lora(model, rank=8, alpha=16)`` attaches ``y += (x @ A @ B) * alpha / rank`` to every chosen
:class:`~roro_jax.models.decoder.Linear` (``A`` random, ``B`` zero, so the model's outputs are unchanged
until trained). Adapter weights are ``nnx.LoRAParam`` variables: train only them with
``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` or split them out with ``nnx.split(model, nnx.LoRAParam, ...)``.
(``nnx.LoRAParam`` subclasses ``nnx.Param``; use ``nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))`` for the
frozen base.) :func:`merge_lora` folds adapters into the kernels, e.g. before ``save_pretrained``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from roro_jax.models.decoder import Linear

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = ATTENTION_TARGETS + MLP_TARGETS


class LoRA(nnx.Module):
    """``x -> (x @ a @ b) * scale`` with ``a[in, rank]`` ~ N(0, 1/in) and ``b[rank, out]`` = 0."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        std = in_features ** -0.5
        self.a = nnx.LoRAParam((std * jax.random.normal(rngs.params(), (in_features, rank))).astype(param_dtype))
        self.b = nnx.LoRAParam(jnp.zeros((rank, out_features), param_dtype))
        self.scale = alpha / rank

    def __call__(self, x: jax.Array) -> jax.Array:
        return (x @ self.a[...].astype(x.dtype)) @ self.b[...].astype(x.dtype) * self.scale

    def delta(self) -> jax.Array:
        """The adapter as a dense ``[in, out]`` update of the kernel."""
        return (self.a[...] @ self.b[...]) * self.scale


def _targets(model: nnx.Module, targets: tuple[str, ...]) -> list[Linear]:
    return [node for path, node in nnx.iter_graph(model)
            if isinstance(node, Linear) and path and path[-1] in targets]


def add_lora(model: nnx.Module, rank: int = 8, alpha: float = 16.0, targets: tuple[str, ...] = DEFAULT_TARGETS,
             *, rngs: nnx.Rngs | None = None) -> int:
    """Attach a fresh adapter to every ``Linear`` named in ``targets`` (in place); returns how many."""
    rngs = nnx.Rngs(0) if rngs is None else rngs
    layers = _targets(model, targets)
    if not layers:
        raise ValueError(f"no Linear layer named any of {targets}")
    for layer in layers:
        k = layer.kernel[...]
        layer.lora = LoRA(k.shape[0], k.shape[1], rank, alpha, rngs=rngs, param_dtype=k.dtype)
    return len(layers)


def merge_lora(model: nnx.Module) -> int:
    """Fold every adapter into its kernel and remove it (in place); returns how many were merged."""
    merged = 0
    for path, node in list(nnx.iter_graph(model)):
        if isinstance(node, Linear) and node.lora is not None:
            node.kernel[...] = (node.kernel[...] + node.lora.delta()).astype(node.kernel[...].dtype)
            node.lora = None
            merged += 1
    return merged
