"""One Flax NNX decoder for the Llama (SmolLM2 included), Qwen2 and Qwen3 families.

Architecture (pre-norm): ``x = embed(ids)``; per layer ``x += attn(rmsnorm(x))``, ``x += mlp(rmsnorm(x))``;
``logits = lm_head(rmsnorm(x))`` (or ``x @ embed.T`` when the embeddings are tied). Attention is
grouped-query with rotary position embeddings (half-split "rotate_half" layout, as in transformers), optional
q/k/v/o biases and, for Qwen3, an RMSNorm over each query/key head before RoPE. The MLP is SwiGLU.

Numerics follow transformers: RMSNorm in float32 then cast back; RoPE tables computed in float32 and cast to
the activation dtype; attention scores and softmax in float32. Logits are returned in float32.

Positions are derived from the attention mask (``cumsum(mask) - 1``), so a left- or right-padded row gives
the same logits at its real tokens as the unpadded row. The KV-cache path (:meth:`Decoder.prefill`,
:meth:`Decoder.decode_step`) uses the same layers; the cache is an explicit pytree, so every method is a
pure function of the model's state and its inputs and can run under ``jax.jit`` after ``nnx.split``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from roro_jax.models.config import DecoderConfig

# A KV cache: one (keys, values) pair per layer, each [batch, num_kv_heads, cache_len, head_dim].
KVCache = tuple[tuple[jax.Array, jax.Array], ...]

_NEG = float(np.finfo(np.float32).min)


def _normal(rngs: nnx.Rngs, shape, std: float, dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class RMSNorm(nnx.Module):
    """``scale * x / sqrt(mean(x^2) + eps)`` over the last axis, normalised in float32."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...] * xf.astype(x.dtype)).astype(x.dtype)


class Linear(nnx.Module):
    """``x @ kernel (+ bias)`` with ``kernel[in, out]``; an optional LoRA adapter (see ``models.lora``) adds to it."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32, init_std: float = 0.02):
        self.kernel = nnx.Param(_normal(rngs, (in_features, out_features), init_std, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.lora = nnx.data(None)  # a LoRA adapter, attached by models.lora.add_lora
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora is not None:
            y = y + self.lora(x).astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table ``[vocab, hidden]``; :meth:`attend` is the tied output projection."""

    def __init__(self, vocab: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 init_std: float = 0.02):
        self.embedding = nnx.Param(_normal(rngs, (vocab, dim), init_std, param_dtype))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        return jnp.dot(h, self.embedding[...].astype(h.dtype).T, preferred_element_type=jnp.float32)


def rope_tables(positions: jax.Array, cfg: DecoderConfig) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [B, T, head_dim] (float32) for integer ``positions`` [B, T]."""
    inv_freq, scale = cfg.rope_inv_freq()
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x`` [B, T, H, D] by the tables [B, T, D] (half-split layout)."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _heads(q: jax.Array, k: jax.Array, v: jax.Array):
    """[B,T,Hq,D] queries and [B,S,Hkv,D] keys/values -> head-major q [B,Hkv,T,G,D] (scaled by D^-1/2),
    k/v [B,Hkv,S,D]: the layout in which both attention products are plain batched matmuls."""
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    qh = (q * jnp.asarray(d ** -0.5, q.dtype)).reshape(b, t, hkv, hq // hkv, d).transpose(0, 2, 1, 3, 4)
    return qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _attend_heads(qh: jax.Array, kh: jax.Array, vh: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention in the head-major layout of :func:`_heads`; mask [B,T,S] -> [B,Hkv,T,G,D].

    Scores and softmax statistics are float32; the normalisation is applied to the [.., D] output rather
    than to the [.., S] probabilities (one pass less over the largest tensor).
    """
    b, hkv, t, g, d = qh.shape
    s = kh.shape[2]
    scores = jnp.einsum("bkmd,bksd->bkms", qh.reshape(b, hkv, t * g, d), kh, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, :, None, :], scores.reshape(b, hkv, t, g, s), _NEG)
    # a query with no allowed key has all scores at _NEG: exp(0) everywhere, a uniform average (not NaN)
    unnormalised = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    total = jnp.sum(unnormalised, axis=-1)
    out = jnp.einsum("bkms,bksd->bkmd", unnormalised.reshape(b, hkv, t * g, s).astype(vh.dtype), vh,
                     preferred_element_type=jnp.float32)
    return (out.reshape(b, hkv, t, g, d) / total[..., None]).astype(vh.dtype)


def _from_heads(out: jax.Array) -> jax.Array:
    """[B,Hkv,T,G,D] -> [B,T,Hq,D]."""
    b, hkv, t, g, d = out.shape
    return out.transpose(0, 2, 1, 3, 4).reshape(b, t, hkv * g, d)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q [B,T,Hq,D], k/v [B,S,Hkv,D], mask [B,T,S] (True = may attend) -> [B,T,Hq,D].

    A query with no allowed key (a padding position) gets a uniform average instead of NaN.
    """
    return _from_heads(_attend_heads(*_heads(q, k, v), mask))


def attend_causal(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, block: int = 128) -> jax.Array:
    """:func:`attend` for a causal ``mask`` over the same T tokens ([B, T, T]), in query blocks.

    Query block ``[i, i + block)`` only looks at keys ``[0, i + block)``: the keys after it are masked
    anyway, so the result equals :func:`attend` while computing about half the scores for long T.
    """
    return _from_heads(_attend_causal_heads(*_heads(q, k, v), mask, block))


def _attend_causal_heads(qh: jax.Array, kh: jax.Array, vh: jax.Array, mask: jax.Array, block: int = 128
                         ) -> jax.Array:
    t = qh.shape[2]
    if t <= block:
        return _attend_heads(qh, kh, vh, mask)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        outs.append(_attend_heads(qh[:, :, start:end], kh[:, :, :end], vh[:, :, :end], mask[:, start:end, :end]))
    return jnp.concatenate(outs, axis=2)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, init_std=cfg.initializer_range)
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(h, cfg.num_heads * d, use_bias=cfg.qkv_bias, **kw)
        self.k_proj = Linear(h, cfg.num_kv_heads * d, use_bias=cfg.qkv_bias, **kw)
        self.v_proj = Linear(h, cfg.num_kv_heads * d, use_bias=cfg.qkv_bias, **kw)
        self.o_proj = Linear(cfg.num_heads * d, h, use_bias=cfg.o_bias, **kw)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d

    def __call__(self, x, cos, sin, mask, cache=None, write_index=None, attend_cache=False):
        """x [B,T,H] -> ([B,T,H], updated (k, v) cache or None).

        With ``cache`` the new keys/values are written at ``write_index``; ``attend_cache`` then selects
        whether the queries attend over the whole cache (decoding; ``mask`` is [B,T,S]) or only over the
        new tokens (prefill; ``mask`` is [B,T,T]).
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        qh, kh, vh = _heads(q, k, v)
        new_cache = None
        if cache is not None:  # head-major [B, Hkv, S, D], as the attention products read it
            ck, cv = cache
            ck = jax.lax.dynamic_update_slice(ck, kh.astype(ck.dtype), (0, 0, write_index, 0))
            cv = jax.lax.dynamic_update_slice(cv, vh.astype(cv.dtype), (0, 0, write_index, 0))
            new_cache = (ck, cv)
            if attend_cache:
                kh, vh = ck.astype(q.dtype), cv.astype(q.dtype)
        out = _attend_heads(qh, kh, vh, mask) if attend_cache else _attend_causal_heads(qh, kh, vh, mask)
        return self.o_proj(_from_heads(out).reshape(b, t, self.num_heads * self.head_dim)), new_cache


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, init_std=cfg.initializer_range,
                  use_bias=cfg.mlp_bias)
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x, cos, sin, mask, cache=None, write_index=None, attend_cache=False):
        h, new_cache = self.attn(self.input_norm(x), cos, sin, mask, cache, write_index, attend_cache)
        x = x + h
        x = x + self.mlp(self.post_attn_norm(x))
        return x, new_cache


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position of every token among its row's real tokens: ``max(cumsum(mask) - 1, 0)`` [B, T] int32."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(mask: jax.Array) -> jax.Array:
    """[B, T] key validity -> [B, T, T] attention mask (causal and only onto real tokens)."""
    t = mask.shape[-1]
    tri = jnp.tril(jnp.ones((t, t), dtype=bool))
    return tri[None] & mask.astype(bool)[:, None, :]


class Decoder(nnx.Module):
    """A causal LM. ``model(input_ids, attention_mask=None) -> logits [B, T, V]`` (float32).

    Build one with random weights via :func:`init_model` or from a Hugging Face folder via
    ``roro_jax.models.from_pretrained``. ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype.
    """

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=None):
        param_dtype = dtype if param_dtype is None else param_dtype
        self.config = cfg
        self.dtype = dtype
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                           init_std=cfg.initializer_range)
        self.layers = nnx.List([Block(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                                for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, rngs=rngs, dtype=dtype,
                                  param_dtype=param_dtype, init_std=cfg.initializer_range)

    # ------------------------------------------------------------------ pieces
    def project(self, hidden: jax.Array) -> jax.Array:
        """Final hidden states [..., H] -> float32 logits [..., V]."""
        if self.lm_head is None:
            return self.embed.attend(hidden)
        return jnp.dot(hidden, self.lm_head.kernel[...].astype(hidden.dtype), preferred_element_type=jnp.float32)

    def _run(self, input_ids, positions, mask, cache=None, write_index=None, attend_cache=False):
        x = self.embed(input_ids)
        cos, sin = rope_tables(positions, self.config)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, layer_cache = layer(x, cos, sin, mask, None if cache is None else cache[i], write_index,
                                   attend_cache)
            new_cache.append(layer_cache)
        return self.norm(x), (tuple(new_cache) if cache is not None else None)

    # ------------------------------------------------------------------ no cache
    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Final (normalised) hidden states [B, T, H] for token ids [B, T] and an optional 0/1 mask [B, T]."""
        chex.assert_rank(input_ids, 2)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, dtype=bool)
        chex.assert_equal_shape([input_ids, attention_mask])
        positions = positions_from_mask(attention_mask)
        hidden, _ = self._run(input_ids, positions, causal_mask(attention_mask))
        return hidden

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Logits [B, T, V] (float32); padded positions (mask 0) hold meaningless but finite values."""
        logits = self.project(self.hidden_states(input_ids, attention_mask))
        chex.assert_shape(logits, (*input_ids.shape, self.config.vocab_size))
        return logits

    # ------------------------------------------------------------------ KV cache
    def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
        """An all-zero cache for ``batch`` rows of ``length`` slots."""
        cfg = self.config
        shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
        dtype = self.dtype if dtype is None else dtype
        return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers))

    def prefill(self, input_ids: jax.Array, attention_mask: jax.Array, cache: KVCache
                ) -> tuple[jax.Array, KVCache]:
        """Run a left-padded prompt [B, P] and write its keys/values into cache slots [0, P).

        Returns the logits [B, V] at the last slot (the next-token distribution of every left-padded row)
        and the filled cache.
        """
        chex.assert_rank([input_ids, attention_mask], 2)
        positions = positions_from_mask(attention_mask)
        hidden, cache = self._run(input_ids, positions, causal_mask(attention_mask), cache, 0, False)
        return self.project(hidden[:, -1]), cache

    def decode_step(self, tokens: jax.Array, positions: jax.Array, cache: KVCache, kv_valid: jax.Array,
                    write_index: jax.Array) -> tuple[jax.Array, KVCache]:
        """Feed one token per row. tokens/positions [B]; ``kv_valid`` [B, S] marks the cache slots that hold
        real tokens, this step's slot ``write_index`` included. Returns logits [B, V] and the cache."""
        chex.assert_rank([tokens, positions], 1)
        mask = kv_valid.astype(bool)[:, None, :]
        hidden, cache = self._run(tokens[:, None], positions[:, None], mask, cache, write_index, True)
        return self.project(hidden[:, 0]), cache


def init_model(cfg: DecoderConfig, *, seed: int = 0, dtype=jnp.float32, param_dtype=None) -> Decoder:
    """A freshly initialised model (normal(0, ``initializer_range``) weights, unit norms), ready for optax."""
    return Decoder(cfg, rngs=nnx.Rngs(seed), dtype=dtype, param_dtype=param_dtype)


def abstract_model(cfg: DecoderConfig, *, dtype=jnp.float32, param_dtype=None) -> Decoder:
    """The model's structure with ``jax.ShapeDtypeStruct`` leaves (nothing allocated), for loaders."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))


def param_count(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
