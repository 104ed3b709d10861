"""What an engine reads from a Hugging Face model folder: its tokenizer (loaded lazily behind
``encode`` / ``decode``, :class:`HFTokenizerMixin`) and its parameter count (from the safetensors headers).
Shared by the ``openai_server`` and ``vllm_offline`` engines."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Sequence

from roro_jax.tokenizer import load_tokenizer

__all__ = ["HFTokenizerMixin", "count_params", "load_tokenizer"]


def count_params(folder: str | os.PathLike) -> int:
    """Parameter count of an HF folder from its ``*.safetensors`` headers (no tensor is read); a tied
    ``lm_head`` is not stored and so not counted."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}: pass n_params explicitly")
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(hlen))
        for name, info in header.items():
            if name != "__metadata__":
                n += math.prod(info["shape"])
    return n


class HFTokenizerMixin:
    """``encode``/``decode`` through a lazily loaded HF tokenizer."""

    tokenizer_path: str | None
    _tok: Any = None

    @property
    def tokenizer(self):
        if self._tok is None:
            if not self.tokenizer_path:
                raise ValueError(f"{type(self).__name__}: no tokenizer_path given, cannot encode/decode text")
            self._tok = load_tokenizer(self.tokenizer_path)
        return self._tok

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` as the model sees a prompt (the tokenizer's special tokens, e.g. a Llama
        BOS, added; ``add_special_tokens=False`` for a bare fragment). The rollout encodes whole prefixes
        (prompt + kept steps) with this, as with the ``flax`` engine."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    @property
    def tokenizer_key(self) -> str:
        """A fingerprint of the tokenizer (same recipe as the ``flax`` engine's): engines with equal keys
        encode any text to the same ids, so the rollout computes a prefix's ids once for them."""
        if getattr(self, "_tokenizer_key", None) is None:
            import hashlib

            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            blob = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
            self._tokenizer_key = hashlib.sha1(blob.encode()).hexdigest()
        return self._tokenizer_key

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id
