"""Step engines: the ``StepEngine`` protocol and a registry of implementations, imported lazily.

    engine = make_engine("openai_server", model="small", endpoints=["http://127.0.0.1:8000/v1"],
                         tokenizer_path="models/small")
    engine = make_engine("vllm_offline", model="models/small")      # imports vllm only here
    engine = make_engine("flax", ...)

``ENGINES`` maps a name to ``"module:Class"``; a module is imported only when its engine is made, so
``vllm`` (which lives in its own venv) is never imported unless ``vllm_offline`` is chosen. Register a new
engine with :func:`register_engine` or by adding an entry to ``ENGINES``.
"""

from __future__ import annotations

import importlib
from typing import Any

from roro_jax.engines.base import (STEP_DELIMITER, SamplingParams, StepEngine, StepRequest,  # noqa: F401
                                   StepResult)

ENGINES: dict[str, str] = {
    "flax": "roro_jax.engines.flax_engine:FlaxEngine",
    "openai_server": "roro_jax.engines.openai_server:OpenAIServerEngine",
    "vllm_offline": "roro_jax.engines.vllm_offline:VLLMOfflineEngine",
}


def register_engine(name: str, target: str) -> None:
    """Add ``name`` -> ``"module:Class"`` to the registry (replacing an existing entry)."""
    if ":" not in target:
        raise ValueError(f"register_engine: target must be 'module:Class', got {target!r}")
    ENGINES[name] = target


def engine_class(name: str) -> type:
    """The engine class registered as ``name`` (its module imported now)."""
    try:
        target = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_engine(name: str, **kwargs: Any) -> StepEngine:
    """Construct the engine registered as ``name`` with ``kwargs``."""
    return engine_class(name)(**kwargs)


__all__ = ["ENGINES", "STEP_DELIMITER", "SamplingParams", "StepEngine", "StepRequest", "StepResult",
           "engine_class", "make_engine", "register_engine"]
