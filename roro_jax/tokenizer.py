"""The one tokenizer loader: a Hugging Face tokenizer from a ``tokenizer.json`` file or a model folder
(transformers is imported only when a tokenizer is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

FILES = ("tokenizer.json", "tokenizer_config.json")  # a folder with either holds a tokenizer


def load_tokenizer(path: str | os.PathLike, *, missing_ok: bool = False):
    """The tokenizer of ``path``: a ``tokenizer.json`` file (a fast tokenizer), or a folder holding
    ``tokenizer.json`` / ``tokenizer_config.json`` (``AutoTokenizer``). Anything else is a
    ``FileNotFoundError``, or None with ``missing_ok`` (a model folder without a tokenizer)."""
    path = Path(path)
    if path.is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    if path.is_dir() and any((path / f).exists() for f in FILES):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    if missing_ok:
        return None
    raise FileNotFoundError(f"no tokenizer at {path}: expected a tokenizer.json file or a folder holding "
                            f"{' or '.join(FILES)}")
