"""Flax NNX language models: one decoder for Llama / Qwen2 / Qwen3, HF safetensors I/O, sampler, scoring.

Public entry points::

    model, tokenizer = from_pretrained(folder, dtype=jnp.float32, mesh=None)
    logits = model(input_ids, attention_mask=None)            # [B, T, V] float32
    save_pretrained(model, folder, tokenizer=None)            # HF-compatible folder
    model = init_model(DecoderConfig(...), seed=0)            # random weights, trainable with optax
    token_logprobs(model, tokens, mask)                       # [B, T] scoring of given sequences
    jax.jit(score_fn, compiler_options=long_sequence_options())  # faster long-sequence scoring on CPU
    Sampler(model, tokenizer).generate(prompts, SamplingParams(...))
    ScoreModel(backbone, num_outputs, rngs=...)               # scalar heads read at chosen positions
"""

from roro_jax.models.config import DecoderConfig, UnsupportedModelError
from roro_jax.models.decoder import Decoder, KVCache, abstract_model, init_model, param_count
from roro_jax.models.loading import (CheckpointError, from_pretrained, hf_state_dict, load_tokenizer,
                                     read_config, save_pretrained)
from roro_jax.models.lora import add_lora, merge_lora
from roro_jax.models.sampler import Completion, Sampler, SamplingParams, generate
from roro_jax.models.score import ScoreModel, last_token_positions, token_logprobs
from roro_jax.models.xla_cpu import long_sequence_options

__all__ = [
    "CheckpointError", "Completion", "Decoder", "DecoderConfig", "KVCache", "Sampler", "SamplingParams",
    "ScoreModel", "UnsupportedModelError", "abstract_model", "add_lora", "from_pretrained", "generate",
    "hf_state_dict", "init_model", "last_token_positions", "load_tokenizer", "long_sequence_options", "merge_lora",
    "param_count", "read_config", "save_pretrained", "token_logprobs",
]
