"""DecoderConfig: RoPE variants against transformers, and config.json round trips."""

from __future__ import annotations

import numpy as np
import pytest

from roro_jax.models import DecoderConfig, UnsupportedModelError

ROPES = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 128},
]


@pytest.mark.parametrize("rope", ROPES, ids=[r["rope_type"] for r in ROPES])
def test_rope_frequencies_match_transformers(rope):
    import torch  # noqa: F401  (transformers' rope functions need it)
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32, max_position_embeddings=512,
                     rope_parameters=dict(rope))
    cfg = DecoderConfig.from_hf({**hf.to_dict(), "architectures": ["LlamaForCausalLM"]})
    ours, scale = cfg.rope_inv_freq()
    if rope["rope_type"] == "default":
        want, want_scale = 1.0 / (rope["rope_theta"] ** (np.arange(0, 32, 2) / 32)), 1.0
    else:
        inv, want_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf, "cpu")
        want = inv.numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-6)
    assert scale == pytest.approx(want_scale)


def test_hf_round_trip_keeps_every_field():
    cfg = DecoderConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                        num_kv_heads=2, head_dim=16, model_type="qwen3", qkv_bias=True, o_bias=True,
                        qk_norm=True, rope_theta=1e6, tie_word_embeddings=True, eos_token_ids=(5, 6),
                        rope_scaling=(("factor", 2.0), ("rope_type", "linear")))
    again = DecoderConfig.from_hf(cfg.to_hf())
    assert again == cfg


def test_qwen2_bias_layout_is_fixed_by_family():
    base = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = DecoderConfig.from_hf(base)
    assert cfg.qkv_bias and not cfg.o_bias and not cfg.qk_norm and cfg.num_kv_heads == 2


def test_unsupported_settings_are_named():
    base = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    with pytest.raises(UnsupportedModelError, match="use_sliding_window"):
        DecoderConfig.from_hf({**base, "use_sliding_window": True})
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        DecoderConfig.from_hf({**base, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(UnsupportedModelError, match="MistralForCausalLM"):
        DecoderConfig.from_hf({**base, "architectures": ["MistralForCausalLM"]})
