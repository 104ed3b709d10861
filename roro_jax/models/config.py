"""Decoder hyper-parameters, read from and written to Hugging Face ``config.json`` dictionaries.

One frozen, hashable :class:`DecoderConfig` describes every supported family (Llama, incl. SmolLM2;
Qwen2; Qwen3). The family-specific switches (q/k/v biases, q/k RMSNorm) are explicit fields, filled in
from the family table in :mod:`roro_jax.models.families` when a ``config.json`` is read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roro_jax.models.families import FAMILIES, Family, UnsupportedModelError, family_for


SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a decoder-only transformer (pre-norm, RoPE, GQA, SwiGLU, RMSNorm).

    ``rope_scaling`` holds the non-default RoPE parameters as a sorted tuple of ``(key, value)`` pairs
    (``rope_type`` included) so the config stays hashable and can live in a jitted function's static
    metadata. ``eos_token_ids`` lists every id that ends generation.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    model_type: str = "llama"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported (supported: {sorted(FAMILIES)})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        rope_type = dict(self.rope_scaling).get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> "DecoderConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ RoPE
    def rope_inv_freq(self) -> tuple[np.ndarray, float]:
        """Inverse frequencies [head_dim // 2] (float32) and the cos/sin scale, as transformers computes them."""
        params = dict(self.rope_scaling)
        rope_type = params.get("rope_type", "default")
        dim = self.head_dim
        base = self.rope_theta
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
        inv_freq = (1.0 / (base ** exponents)).astype(np.float32)
        scale = 1.0
        if rope_type == "linear":
            inv_freq = inv_freq / np.float32(params["factor"])
        elif rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        elif rope_type == "yarn":
            inv_freq, scale = _yarn_inv_freq(self, params, dim, base)
        return inv_freq.astype(np.float32), float(scale)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "DecoderConfig":
        """Read a Hugging Face ``config.json`` dictionary; unsupported settings raise :class:`UnsupportedModelError`."""
        family = family_for(hf)
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"config.json: hidden_act={act!r} is not supported (only 'silu')")
        if hf.get("use_sliding_window"):
            raise UnsupportedModelError("config.json: use_sliding_window=true is not supported")
        if hf.get("pretraining_tp", 1) not in (1, None):
            raise UnsupportedModelError(f"config.json: pretraining_tp={hf['pretraining_tp']} is not supported")
        hidden = int(hf["hidden_size"])
        heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or hidden // heads
        rope = _read_rope(hf)
        theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        if rope.get("rope_type", "default") == "default":
            rope = {}
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedModelError("config.json: partial_rotary_factor != 1 is not supported")
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        attention_bias = bool(hf.get("attention_bias", False))
        known = {f.name for f in dataclasses.fields(cls)}
        extra = tuple(sorted((k, _freeze(v)) for k, v in hf.items() if k not in known))
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            model_type=family.model_type,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=tuple(sorted((k, _freeze(v)) for k, v in rope.items())),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=family.qkv_bias if family.qkv_bias is not None else attention_bias,
            o_bias=family.o_bias if family.o_bias is not None else attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)) if family.has_mlp_bias_option else False,
            qk_norm=family.qk_norm,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            extra=extra,
        )

    def to_hf(self, dtype_name: str = "float32") -> dict[str, Any]:
        """A ``config.json`` dictionary that transformers and vLLM load as this family's ``*ForCausalLM``."""
        family = self.family
        out: dict[str, Any] = {k: _thaw(v) for k, v in self.extra}
        rope: dict[str, Any] = {"rope_type": "default"}
        rope.update({k: _thaw(v) for k, v in self.rope_scaling})
        rope["rope_theta"] = self.rope_theta
        eos: Any = list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else (
            self.eos_token_ids[0] if self.eos_token_ids else None)
        out.update(
            architectures=[family.architecture],
            model_type=family.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            initializer_range=self.initializer_range,
            bos_token_id=self.bos_token_id,
            eos_token_id=eos,
            pad_token_id=self.pad_token_id,
            dtype=dtype_name,
            torch_dtype=dtype_name,
        )
        out.pop("rope_scaling", None)
        if family.qkv_bias is None:
            out["attention_bias"] = self.qkv_bias
        if family.has_mlp_bias_option:
            out["mlp_bias"] = self.mlp_bias
        if family.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = False
        return out


def _read_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either transformers-5 ``rope_parameters`` or the older ``rope_scaling`` key."""
    rope = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling")
    if legacy:
        rope = {**dict(legacy), **rope}
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    rope.pop("type", None)
    if "rope_theta" not in rope and "rope_theta" in hf:
        rope["rope_theta"] = hf["rope_theta"]
    if rope.get("rope_type") == "yarn" and "original_max_position_embeddings" not in rope:
        rope["original_max_position_embeddings"] = hf.get("max_position_embeddings", 2048)
    return rope


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("__list__",) + tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value and value[0] == "__list__":
        return [_thaw(v) for v in value[1:]]
    if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                        for p in value) and value:
        return {k: _thaw(v) for k, v in value}
    return value


def _llama3_inv_freq(inv_freq: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    factor = float(p["factor"])
    low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_len = float(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn_inv_freq(cfg: DecoderConfig, p: dict[str, Any], dim: int, base: float) -> tuple[np.ndarray, float]:
    original = float(p["original_max_position_embeddings"])
    factor = p.get("factor") or cfg.max_position_embeddings / original
    factor = float(factor)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = base ** (np.arange(0, dim, 2).astype(np.float32) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extra_factor = 1 - ramp
    inv_freq = interpolation * (1 - extra_factor) + extrapolation * extra_factor
    return inv_freq.astype(np.float32), float(attention_factor)
