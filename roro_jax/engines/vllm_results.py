"""What the vLLM engines (``openai_server``, ``vllm_offline``) share about vLLM's outputs: the log-prob
limit and the sampling checks, finish reasons, top-k log-prob arrays, and the errors for an answer that
lacks what an engine needs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from roro_jax.engines.base import EngineError, SamplingParams

__all__ = ["MAX_LOGPROBS", "EngineError", "MalformedResponseError", "map_finish_reason", "topk_arrays",
           "validate_params"]

MAX_LOGPROBS = 20


class MalformedResponseError(EngineError):
    """The server answered, but without the fields the engine needs (token ids, log-probs, ...)."""


def map_finish_reason(finish_reason: str | None, stop_reason: Any) -> str:
    """vLLM's ``(finish_reason, stop_reason)`` -> ``"stop"`` (stop string) | ``"eos"`` | ``"length"``."""
    if finish_reason == "length":
        return "length"
    if finish_reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"
    raise ValueError(f"unexpected finish_reason {finish_reason!r} (stop_reason {stop_reason!r})")


def topk_arrays(tops: Sequence[Mapping[int, float]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-position ``{token_id: logprob}`` dicts -> ``(top_logprobs [L, k] f32, top_ids [L, k] i32)``,
    each row sorted by log-prob (descending), padded with ``-inf`` / ``-1``. vLLM may add the sampled
    token as a (k+1)-th entry; only the k largest are kept."""
    L = len(tops)
    lps = np.full((L, k), -np.inf, np.float32)
    ids = np.full((L, k), -1, np.int32)
    for i, d in enumerate(tops):
        best = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        for j, (tid, lp) in enumerate(best):
            ids[i, j] = tid
            lps[i, j] = lp
    return lps, ids


def validate_params(params: SamplingParams) -> None:
    if not 0 <= params.logprobs <= MAX_LOGPROBS:
        raise ValueError(f"SamplingParams.logprobs={params.logprobs}: must be in [0, {MAX_LOGPROBS}]")
    if params.max_tokens < 1:
        raise ValueError(f"SamplingParams.max_tokens={params.max_tokens}: must be >= 1")
