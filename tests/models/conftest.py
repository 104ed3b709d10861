"""Fixtures for the LM tests (helpers live in lm_testkit.py)."""

from __future__ import annotations

import pytest
from lm_testkit import char_tokenizer, make_hf_model


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """``hf_folder(family)`` -> (folder, torch model): saved with transformers' save_pretrained, cached."""
    cache = {}

    def get(family: str):
        if family not in cache:
            model = make_hf_model(family)
            folder = tmp_path_factory.mktemp(family)
            model.save_pretrained(folder)
            char_tokenizer().save_pretrained(folder)
            cache[family] = (folder, model)
        return cache[family]

    return get
