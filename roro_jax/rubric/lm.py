"""Building the Judge's and the Rubricor's language models: one code path for tiny and real models.

``LMSpec.path`` set: an HF folder read with :func:`roro_jax.models.from_pretrained` (Qwen3 / Qwen2 / Llama;
e.g. Qwen3-0.6B for the Judge, Qwen3-1.7B for the Rubricor), its own tokenizer; ``toy:NAME`` names a toy
model that ships in the package (``toy:large``, ``toy:small``, ``toy:chain/large``, ...; see
:func:`resolve_model_path`). ``path`` None: a
randomly initialised Llama-architecture decoder of the given size over the toy world's character
tokenizer (:func:`roro_jax.tasks.toy.build_tokenizer`). ``lora_rank > 0`` adds LoRA adapters and trains
only them (and the score head, for the Judge).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import jax.numpy as jnp
from flax import nnx

from roro_jax.models import DecoderConfig, from_pretrained, init_model
from roro_jax.models.lora import add_lora


@dataclass
class LMSpec:
    path: Optional[str] = None
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 176
    max_position_embeddings: int = 1024
    lora_rank: int = 0
    lora_alpha: float = 16.0


def char_tokenizer():
    from roro_jax.tasks.toy import build_tokenizer

    return build_tokenizer()


def resolve_model_path(path: str) -> str:
    """``toy:NAME`` -> the shipped toy model folder ``roro_jax/assets/toy/NAME``; any other path as given."""
    if path.startswith("toy:"):
        from roro_jax.worlds.toy import toy_assets_dir

        folder = toy_assets_dir() / path[4:]
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{path}: no shipped toy model at {folder}")
        return str(folder)
    return path


def build_lm(spec: LMSpec, *, seed: int = 0) -> tuple[Any, Any]:
    """``(decoder, tokenizer)`` per ``spec`` (see the module docstring)."""
    if spec.path:
        model, tok = from_pretrained(resolve_model_path(spec.path), dtype=jnp.float32)
    else:
        tok = char_tokenizer()
        head_dim = spec.hidden_size // spec.num_heads
        cfg = DecoderConfig(vocab_size=len(tok), hidden_size=spec.hidden_size,
                            intermediate_size=spec.intermediate_size, num_layers=spec.num_layers,
                            num_heads=spec.num_heads, num_kv_heads=spec.num_heads, head_dim=head_dim,
                            max_position_embeddings=spec.max_position_embeddings,
                            bos_token_id=tok.bos_token_id, eos_token_ids=(tok.eos_token_id,),
                            pad_token_id=tok.pad_token_id)
        model = init_model(cfg, seed=seed)
    if spec.lora_rank > 0:
        add_lora(model, rank=spec.lora_rank, alpha=spec.lora_alpha, rngs=nnx.Rngs(seed + 1))
    return model, tok


def trainable_filter(spec: LMSpec, extra: tuple[str, ...] = ()):
    """What an optimiser updates: every parameter, or with LoRA only the adapters plus ``extra`` names."""
    if spec.lora_rank > 0:
        return nnx.Any(nnx.LoRAParam, *[nnx.PathContains(n) for n in extra])
    return nnx.Param


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def bos(tokenizer) -> list[int]:
    b = getattr(tokenizer, "bos_token_id", None)
    return [] if b is None else [int(b)]
