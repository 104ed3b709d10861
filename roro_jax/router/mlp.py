"""The router: a small MLP policy over {keep, escalate}."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu}
N_ACTIONS = 2  # 0 = keep, 1 = escalate


def _weight_grad(x, g):
    return x.T @ g


def _weight_grad_cpu(x, g):
    # x^T materialised behind a barrier: otherwise XLA:CPU folds the transpose into the dot and runs x^T g as a
    # contraction over both operands' row axis, which it hands to a slower path than the plain row-major GEMM
    # it gets here (~1.1-1.3x the whole GRPO update at 1k-8k routing steps)
    return jax.lax.optimization_barrier(x.T) @ g


@jax.custom_vjp
def dense(x, kernel, bias):
    """``x [N, I] @ kernel [I, O] + bias [O]``, as ``nnx.Linear`` computes it, with the same gradients; on CPU
    the kernel's gradient ``x^T g`` is computed as a plain GEMM (see ``_weight_grad_cpu``). Reverse-mode only
    (a ``custom_vjp``)."""
    return x @ kernel + bias


def _dense_fwd(x, kernel, bias):
    return x @ kernel + bias, (x, kernel)


def _dense_bwd(res, g):
    x, kernel = res
    dkernel = jax.lax.platform_dependent(x, g, cpu=_weight_grad_cpu, default=_weight_grad)
    return g @ kernel.T, dkernel, jnp.sum(g, axis=0)


dense.defvjp(_dense_fwd, _dense_bwd)


class RouterMLP(nnx.Module):
    """``features [..., F] -> logits [..., 2]`` (keep, escalate).

    Args:
      in_features: F.
      hidden: widths of the hidden layers (default 128, 128).
      activation: tanh | relu | gelu | silu.
      layer_norm: LayerNorm after every hidden linear layer.
      escalate_bias: initial bias of the escalate logit (negative = start mostly keeping).
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (128, 128), activation: str = "tanh",
                 layer_norm: bool = False, escalate_bias: float = 0.0, *, rngs: nnx.Rngs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        widths = [in_features, *hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.norms = nnx.List([nnx.LayerNorm(b, rngs=rngs) for b in hidden]) if layer_norm else None
        self.head = nnx.Linear(widths[-1], N_ACTIONS, kernel_init=nnx.initializers.orthogonal(0.01),
                               rngs=rngs)
        self.head.bias[...] = jnp.array([0.0, escalate_bias], jnp.float32)

    def __call__(self, x):
        # rows flattened to one axis: [N, F] activations make every weight gradient one plain GEMM that
        # contracts the row axis (with [B, T, F] XLA contracts two axes and transposes the output gradients
        # into a copy first; ~1.5x the whole GRPO update on CPU). Same sums, same result.
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            x = dense(x, layer.kernel[...], layer.bias[...])
            if self.norms is not None:
                x = self.norms[i](x)
            x = act(x)
        return dense(x, self.head.kernel[...], self.head.bias[...]).reshape(*lead, N_ACTIONS)


def action_logp_entropy(logits, actions):
    """log pi(action) and the policy entropy from logits [..., 2] and integer actions [...]."""
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = jnp.take_along_axis(logp_all, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy


def escalate_prob(logits):
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


def make_router(cfg, in_features: int, seed: int = 0, escalate_bias: float = 0.0) -> RouterMLP:
    """Build a :class:`RouterMLP` from a ``RouterConfig``."""
    return RouterMLP(in_features, tuple(cfg.hidden), cfg.activation, cfg.layer_norm, escalate_bias,
                     rngs=nnx.Rngs(seed))
