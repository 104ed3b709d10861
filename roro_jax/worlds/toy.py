"""The embedded toy world's models: two tiny Llama-architecture reasoning models shipped in the package.

``roro_jax/assets/toy/`` holds ``small/`` and ``large/`` (HF-format folders: ``config.json``,
``model.safetensors``, ``tokenizer.json``, plus ``train_meta.json`` with how each was trained) and
``task.json``, the :class:`~roro_jax.tasks.toy.ToyConfig` both were trained on. They were made by
``python -m pipelines.pretrain_toy`` (see ``roro_jax/assets/toy/README.md`` for the command, the seed and
the measured accuracies), so a new user needs no pretraining step and downloads nothing::

    from roro_jax.worlds.toy import load_toy_models, toy_heldout
    (small, small_tok), (large, large_tok), task = load_toy_models()
    problems = toy_heldout(500)          # the standard held-out set under the models' task config

The folders load with :func:`roro_jax.models.from_pretrained`, transformers' ``LlamaForCausalLM`` /
``AutoTokenizer`` and vLLM (vocab size == tokenizer size, head_dim 32). Prompts are
``tokenizer.encode(toy.prompt_text(problem) + kept steps)`` (the tokenizer prepends ``<s>``, as the models
were trained); a solution ends with ``</s>`` after its ``Answer: N`` step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from roro_jax.tasks import toy

TOY_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy"
TASK_FILE = "task.json"
MODEL_NAMES = ("small", "large")


def toy_assets_dir() -> Path:
    """The folder holding the shipped toy models and their ``task.json``."""
    return TOY_ASSETS


def toy_model_dir(which: str = "small") -> Path:
    """Path of the shipped ``"small"`` or ``"large"`` toy model folder (it must exist)."""
    if which not in MODEL_NAMES:
        raise ValueError(f"toy model must be one of {MODEL_NAMES}, got {which!r}")
    folder = TOY_ASSETS / which
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: the shipped toy model is missing (regenerate it with "
                                f"`python -m pipelines.pretrain_toy`)")
    return folder


def toy_task_config(folder: str | Path | None = None) -> toy.ToyConfig:
    """The :class:`~roro_jax.tasks.toy.ToyConfig` the toy models were trained on (from ``task.json``)."""
    path = Path(folder or TOY_ASSETS) / TASK_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no toy task config next to the toy models")
    data = json.loads(path.read_text())
    return toy.ToyConfig(**data)


def toy_heldout(n: int = 500, *, seed: int = 0) -> list:
    """``n`` held-out (test-split) problems under the shipped models' task config (:func:`toy.heldout`)."""
    return toy.heldout(n, toy_task_config(), seed=seed)


def toy_train_meta(which: str = "small") -> dict[str, Any]:
    """How a shipped model was trained (``train_meta.json``: spec, seed, steps, wall time, curves)."""
    path = toy_model_dir(which) / "train_meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


class ToyModels(NamedTuple):
    """``(small, large, task)``: ``small``/``large`` are ``(model, tokenizer)`` pairs."""

    small: tuple[Any, Any]
    large: tuple[Any, Any]
    task: toy.ToyConfig


def load_toy_models(dtype=None) -> ToyModels:
    """Load both shipped toy models with :func:`roro_jax.models.from_pretrained` and their task config."""
    import jax.numpy as jnp

    from roro_jax.models import from_pretrained

    dtype = jnp.float32 if dtype is None else dtype
    small = from_pretrained(toy_model_dir("small"), dtype=dtype)
    large = from_pretrained(toy_model_dir("large"), dtype=dtype)
    return ToyModels(small, large, toy_task_config())


__all__ = ["MODEL_NAMES", "TOY_ASSETS", "ToyModels", "load_toy_models", "toy_assets_dir", "toy_heldout",
           "toy_model_dir", "toy_task_config", "toy_train_meta"]
