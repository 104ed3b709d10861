"""Scoring given sequences: per-token log-probabilities, and a scalar-head :class:`ScoreModel`.

:func:`token_logprobs` is the pure function GRPO on LM tokens needs: ``logp[b, t] = log p(tokens[b, t] |
tokens[b, :t])`` for ``t >= 1`` (0 at ``t = 0`` and wherever ``mask`` is 0), computed without
materialising the full ``[B, T, V]`` logits (the vocabulary projection runs in sequence chunks).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from roro_jax.models.decoder import Decoder


def _chunk_logprobs(model: Decoder, hidden: jax.Array, targets: jax.Array, temperature: float) -> jax.Array:
    logits = model.project(hidden)
    if temperature != 1.0:
        logits = logits / temperature
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def _check_token_ids(tokens, vocab: int) -> None:
    """Integer ids in ``[0, vocab)``: the dtype always; the values when ``tokens`` are concrete (an eager
    call; inside ``jit`` they are tracers and the caller's inputs were checked where they were made).
    Out-of-range ids would otherwise be clamped or filled silently by the gathers."""
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
    if isinstance(tokens, jax.core.Tracer):
        return
    t = np.asarray(tokens)
    if t.size and (t.min() < 0 or t.max() >= vocab):
        bad = np.argwhere((t < 0) | (t >= vocab))[0].tolist()
        raise ValueError(f"token id {t[tuple(bad)]} at index {bad} is outside the vocabulary [0, {vocab})")


def token_logprobs(model: Decoder, tokens: jax.Array, mask: jax.Array | None = None, *,
                   temperature: float = 1.0, chunk: int = 128) -> jax.Array:
    """Log-probability of every token given the ones before it: [B, T] float32.

    ``tokens`` [B, T] int, ``mask`` [B, T] (1 = real token, any padding layout). Entry ``t`` scores
    ``tokens[:, t]`` from the prefix before it, so it is 0 at ``t = 0`` and at masked positions (and at a
    row's first real token, which has no prefix). ``chunk`` bounds how many positions are projected onto
    the vocabulary at once. Pure and differentiable; jit it with ``nnx.jit`` or after ``nnx.split``.
    """
    chex.assert_rank(tokens, 2)
    _check_token_ids(tokens, model.config.vocab_size)
    if mask is None:
        mask = jnp.ones(tokens.shape, bool)
    chex.assert_equal_shape([tokens, mask])
    mask = mask.astype(bool)
    b, t = tokens.shape
    hidden = model.hidden_states(tokens, mask)[:, :-1]  # predicts tokens[:, 1:]
    targets = tokens[:, 1:]
    n = t - 1
    if n == 0:
        return jnp.zeros((b, t), jnp.float32)
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n_chunks = (n + pad) // chunk
    h = hidden.reshape(b, n_chunks, chunk, -1).swapaxes(0, 1)
    y = targets.reshape(b, n_chunks, chunk).swapaxes(0, 1)
    lp = jax.lax.map(lambda hy: _chunk_logprobs(model, hy[0], hy[1], temperature), (h, y))
    lp = lp.swapaxes(0, 1).reshape(b, n + pad)[:, :n]
    # A token is scored only if it and some earlier token are real.
    has_prefix = jnp.cumsum(mask.astype(jnp.int32), axis=-1)[:, :-1] > 0
    lp = jnp.where(mask[:, 1:] & has_prefix, lp, 0.0)
    return jnp.concatenate([jnp.zeros((b, 1), jnp.float32), lp], axis=1)


def last_token_positions(mask: jax.Array) -> jax.Array:
    """Index of each row's last real token [B, 1] (any padding layout; 0 for an all-padding row)."""
    t = mask.shape[-1]
    idx = jnp.where(mask.astype(bool), jnp.arange(t)[None, :], -1)
    return jnp.maximum(jnp.max(idx, axis=-1), 0)[:, None]


class ScoreModel(nnx.Module):
    """A decoder backbone plus a linear head giving ``num_outputs`` scalars at chosen positions.

    ``model(input_ids, attention_mask=None, positions=None) -> [B, K, num_outputs]`` reads the final
    hidden state at ``positions`` [B, K] (default: each row's last real token, K = 1). The Judge reads one
    position per rubric criterion, or one position with one output per criterion. Add LoRA adapters to
    the backbone with :func:`roro_jax.models.lora.add_lora` to tune a large backbone cheaply.
    """

    def __init__(self, backbone: Decoder, num_outputs: int = 1, *, rngs: nnx.Rngs, init_std: float = 0.0):
        self.backbone = backbone
        h = backbone.config.hidden_size
        std = init_std
        kernel = std * jax.random.normal(rngs.params(), (h, num_outputs), jnp.float32) if std else \
            jnp.zeros((h, num_outputs), jnp.float32)
        self.head_kernel = nnx.Param(kernel)
        self.head_bias = nnx.Param(jnp.zeros((num_outputs,), jnp.float32))
        self.num_outputs = num_outputs

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        if positions is None:
            positions = last_token_positions(attention_mask)
        chex.assert_rank(positions, 2)
        chex.assert_equal_shape_prefix([input_ids, positions], 1)
        hidden = self.backbone.hidden_states(input_ids, attention_mask)
        picked = jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)
        out = picked.astype(jnp.float32) @ self.head_kernel[...] + self.head_bias[...]
        chex.assert_shape(out, (input_ids.shape[0], positions.shape[1], self.num_outputs))
        return out
