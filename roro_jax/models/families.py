"""Supported model families and the weight-mapping table between HF tensor names and our parameters.

The three families share one decoder (:mod:`roro_jax.models.decoder`) and one naming scheme on the Hugging
Face side; they differ only in which optional tensors exist:

========  =======================  ==========================  ==================
family    q/k/v biases             o_proj bias                 q/k RMSNorm
========  =======================  ==========================  ==================
llama     ``attention_bias``       ``attention_bias``          no
qwen2     always                   never                       no
qwen3     ``attention_bias``       ``attention_bias``          yes (per head)
========  =======================  ==========================  ==================

:data:`WEIGHT_MAP` lists, for every parameter of our model, the HF tensor name and how the array is laid
out there: HF ``nn.Linear`` stores ``[out, in]``, we store ``kernel[in, out]`` (``transpose=True``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class UnsupportedModelError(ValueError):
    """The checkpoint's ``config.json`` describes a model this decoder does not implement."""


@dataclass(frozen=True)
class Family:
    """What distinguishes one HF model family in our shared decoder.

    ``qkv_bias``/``o_bias`` are ``None`` when the family reads them from ``config.json``'s
    ``attention_bias``, else the fixed value.
    """

    model_type: str
    architecture: str
    qkv_bias: bool | None
    o_bias: bool | None
    qk_norm: bool
    has_mlp_bias_option: bool


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaForCausalLM", None, None, qk_norm=False, has_mlp_bias_option=True),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", True, False, qk_norm=False, has_mlp_bias_option=False),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", None, None, qk_norm=True, has_mlp_bias_option=False),
}

_BY_ARCHITECTURE = {f.architecture: f for f in FAMILIES.values()}


def family_for(hf_config: dict[str, Any]) -> Family:
    """The family of a ``config.json`` dictionary, by ``architectures`` then ``model_type``."""
    archs = hf_config.get("architectures") or []
    for arch in archs:
        if arch in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[arch]
    model_type = hf_config.get("model_type")
    if model_type in FAMILIES and not archs:
        return FAMILIES[model_type]
    raise UnsupportedModelError(
        f"config.json: unsupported architecture {archs or model_type!r}; supported: "
        f"{sorted(_BY_ARCHITECTURE)}")


@dataclass(frozen=True)
class WeightRule:
    """One row of the mapping table: ``hf`` and ``ours`` are templates with an optional ``{i}`` (layer)."""

    hf: str
    ours: str
    transpose: bool = False

    def hf_regex(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(\d+)") + "$")


# Our parameter paths are "/"-joined keys of nnx.to_pure_dict(nnx.state(model, nnx.Param)).
WEIGHT_MAP: tuple[WeightRule, ...] = (
    WeightRule("model.embed_tokens.weight", "embed/embedding"),
    WeightRule("model.norm.weight", "norm/scale"),
    WeightRule("lm_head.weight", "lm_head/kernel", transpose=True),
    WeightRule("model.layers.{i}.input_layernorm.weight", "layers/{i}/input_norm/scale"),
    WeightRule("model.layers.{i}.post_attention_layernorm.weight", "layers/{i}/post_attn_norm/scale"),
    WeightRule("model.layers.{i}.self_attn.q_proj.weight", "layers/{i}/attn/q_proj/kernel", transpose=True),
    WeightRule("model.layers.{i}.self_attn.k_proj.weight", "layers/{i}/attn/k_proj/kernel", transpose=True),
    WeightRule("model.layers.{i}.self_attn.v_proj.weight", "layers/{i}/attn/v_proj/kernel", transpose=True),
    WeightRule("model.layers.{i}.self_attn.o_proj.weight", "layers/{i}/attn/o_proj/kernel", transpose=True),
    WeightRule("model.layers.{i}.self_attn.q_proj.bias", "layers/{i}/attn/q_proj/bias"),
    WeightRule("model.layers.{i}.self_attn.k_proj.bias", "layers/{i}/attn/k_proj/bias"),
    WeightRule("model.layers.{i}.self_attn.v_proj.bias", "layers/{i}/attn/v_proj/bias"),
    WeightRule("model.layers.{i}.self_attn.o_proj.bias", "layers/{i}/attn/o_proj/bias"),
    WeightRule("model.layers.{i}.self_attn.q_norm.weight", "layers/{i}/attn/q_norm/scale"),
    WeightRule("model.layers.{i}.self_attn.k_norm.weight", "layers/{i}/attn/k_norm/scale"),
    WeightRule("model.layers.{i}.mlp.gate_proj.weight", "layers/{i}/mlp/gate_proj/kernel", transpose=True),
    WeightRule("model.layers.{i}.mlp.up_proj.weight", "layers/{i}/mlp/up_proj/kernel", transpose=True),
    WeightRule("model.layers.{i}.mlp.down_proj.weight", "layers/{i}/mlp/down_proj/kernel", transpose=True),
    WeightRule("model.layers.{i}.mlp.gate_proj.bias", "layers/{i}/mlp/gate_proj/bias"),
    WeightRule("model.layers.{i}.mlp.up_proj.bias", "layers/{i}/mlp/up_proj/bias"),
    WeightRule("model.layers.{i}.mlp.down_proj.bias", "layers/{i}/mlp/down_proj/bias"),
)

# Tensors some checkpoints carry that hold nothing we need (recomputed from the config).
IGNORED_HF_TENSORS = (re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),)


def hf_to_ours(hf_name: str) -> tuple[str, bool] | None:
    """Our parameter path and transpose flag for an HF tensor name, or None if no rule matches."""
    for rule in WEIGHT_MAP:
        m = rule.hf_regex().match(hf_name)
        if m:
            return (rule.ours.replace("{i}", m.group(1)) if m.groups() else rule.ours), rule.transpose
    return None


def ours_to_hf(path: str) -> tuple[str, bool]:
    """The HF tensor name and transpose flag for one of our parameter paths."""
    for rule in WEIGHT_MAP:
        pattern = "^" + re.escape(rule.ours).replace(r"\{i\}", r"(\d+)") + "$"
        m = re.match(pattern, path)
        if m:
            return (rule.hf.replace("{i}", m.group(1)) if m.groups() else rule.hf), rule.transpose
    raise KeyError(f"no HF name for parameter {path!r}")
