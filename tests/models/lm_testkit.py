"""Test kit for the LM tests: tiny random HF models of each family, a char tokenizer, padded batches."""

from __future__ import annotations

import string

import numpy as np

FAMILY_CONFIGS = {
    # name: (transformers config class name, extra kwargs)
    "llama": ("LlamaConfig", {}),
    "llama_tied_bias": ("LlamaConfig", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "llama3_rope": ("LlamaConfig", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                                                        "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 16}}),
}
CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
SPECIALS = ["<pad>", "<eos>", "<bos>"]


def char_tokenizer():
    """A character-level fast tokenizer (one token per character; ids 0-2 are <pad>, <eos>, <bos>)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(""), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>")


def make_hf_model(family: str, *, vocab_size: int | None = None, seed: int = 0, layers: int = 2, **overrides):
    """A transformers PyTorch model of ``family`` with every weight randomised (biases and norms too)."""
    import torch
    import transformers

    cls_name, extra = FAMILY_CONFIGS[family]
    kwargs = dict(vocab_size=vocab_size or len(SPECIALS) + len(CHARS), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, eos_token_id=1, bos_token_id=2, pad_token_id=0)
    kwargs.update(extra)
    kwargs.update(overrides)
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return model


def padded_batch(rng: np.random.RandomState, vocab: int, lengths: list[int], side: str = "left"):
    """Random token rows of the given lengths, padded to the longest on ``side``; returns (ids, mask)."""
    t = max(lengths)
    ids = np.zeros((len(lengths), t), np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        row = rng.randint(3, vocab, n)
        sl = slice(t - n, t) if side == "left" else slice(0, n)
        ids[i, sl] = row
        mask[i, sl] = 1
    return ids, mask


def _logits(model, ids, mask):
    return model(ids, mask)


def _prefill(model, ids, mask, cache):
    return model.prefill(ids, mask, cache)


def _decode(model, tokens, positions, cache, kv_valid, slot):
    return model.decode_step(tokens, positions, cache, kv_valid, slot)


def jitted_logits(model, ids, mask=None):
    """``model(ids, mask)`` under ``nnx.jit`` (one compile per structure and shape) as numpy."""
    from flax import nnx
    import jax.numpy as jnp

    mask = np.ones(np.shape(ids), np.int32) if mask is None else mask
    return np.asarray(_JIT["logits"](model, jnp.asarray(ids), jnp.asarray(mask)))


def _make_jits():
    from flax import nnx

    return {"logits": nnx.jit(_logits), "prefill": nnx.jit(_prefill), "decode": nnx.jit(_decode)}


class _LazyJits(dict):
    def __missing__(self, key):
        self.update(_make_jits())
        return self[key]


_JIT = _LazyJits()
jitted_prefill = lambda *a: _JIT["prefill"](*a)  # noqa: E731
jitted_decode = lambda *a: _JIT["decode"](*a)  # noqa: E731
