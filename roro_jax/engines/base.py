"""The ``StepEngine`` protocol: generate one reasoning *step* for many prefixes at once.

A step ends at the step delimiter ``"\\n\\n"`` (included in the output), at EOS, or at ``max_tokens``.
Engines: ``flax`` (in-process, batched, on ``roro_jax.models``' sampler), ``openai_server`` (a vLLM server
through the OpenAI ``/v1/completions`` API), ``vllm_offline`` (``vllm.LLM`` in-process).

Engines are async so the rollout can overlap many requests; an engine that computes synchronously runs
its batch in a worker thread (``asyncio.to_thread``) so the event loop stays free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

STEP_DELIMITER = "\n\n"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256  # per step
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = (STEP_DELIMITER,)
    logprobs: int = 5  # top-k log-probs returned per generated token (<= 20)


@dataclass
class StepRequest:
    """Generate the next step after ``prompt_ids`` (the query prompt + the steps so far, in the engine's
    own tokenizer); ``seed`` makes the sample reproducible."""

    prompt_ids: list[int]
    seed: int = 0
    request_id: str = ""


@dataclass
class StepResult:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (delimiter) | "eos" | "length"
    logprobs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [L] chosen-token
    top_logprobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [L, k], -inf pad
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class StepEngine(Protocol):
    name: str
    n_params: float  # parameter count, for FLOPs (2 * N per token)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    async def generate(self, requests: Sequence[StepRequest], params: SamplingParams) -> list[StepResult]: ...

    async def aclose(self) -> None: ...


class EngineError(RuntimeError):
    """Base class of the engines' request errors (a server that failed for good after the engine's retries,
    rejected a request, or answered without the needed fields). ``roro`` reports one as a single
    ``roro: error:`` line (exit status 1); its message names the model and the endpoint."""
