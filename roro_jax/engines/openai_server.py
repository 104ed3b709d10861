"""``openai_server`` engine: step generation on vLLM servers through the OpenAI ``/v1/completions`` API.

Each :class:`~roro_jax.engines.base.StepRequest` is one completion request with the prompt as token ids,
``max_tokens``, ``stop`` (the step delimiter), ``logprobs=k``, the request's ``seed`` and vLLM's extra
fields ``include_stop_str_in_output=True`` (the step's text ends with the delimiter),
``return_token_ids=True`` (the generated token ids, ``choices[i].token_ids``) and
``return_tokens_as_token_ids=True`` (log-prob entries keyed ``"token_id:<id>"``, so top-k entries are
never merged by identical decoded strings).

Several endpoints of one model share the load: each request goes to the endpoint with the fewest requests
in flight (ties: round robin), at most ``concurrency`` requests are in flight in total, each attempt has
``timeout`` seconds, and connection errors, timeouts, HTTP 429/5xx and aborted generations are retried up
to ``max_retries`` times with exponential backoff (``backoff * 2**attempt`` seconds, capped at
``max_backoff``, jittered), preferring another endpoint on each retry. A body that is not valid JSON
(a truncated or garbled transfer) is retried the same way. Retries are bounded twice: per request
(``max_retries``) and over the engine's life (``retry_budget``, total retried attempts; ``None``:
unbounded), so a dead fleet fails fast instead of every request backing off in turn. After the last
attempt, or once the budget is spent, an :class:`EndpointUnavailableError` names every endpoint tried
and the last error. A 4xx answer (a bad request) is not retried: :class:`EngineRequestError` carries the
server's message. A 200 answer that is valid JSON but lacks the token ids or log-probs raises
:class:`MalformedResponseError` naming the endpoint and the missing field (not retried: a server that
omits them is misconfigured, e.g. not vLLM).

Every finished request's end-to-end latency (all attempts and backoff included) is kept (the last
100,000) for :meth:`OpenAIServerEngine.latency_stats`, and every backoff delay slept before a retry (the
last 100,000, in order) in ``backoff_delays``.

Finish reasons (vLLM reports ``finish_reason`` and ``stop_reason``): ``"stop"`` with a stop *string* as
``stop_reason`` -> ``"stop"`` (text ends with the delimiter); ``"stop"`` with ``stop_reason`` None (EOS)
or a stop token id -> ``"eos"``; ``"length"`` -> ``"length"``. On EOS vLLM's ``token_ids`` and log-probs
include the EOS token while ``text`` (decoded without special tokens) does not.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import random
import time
from typing import Any, Mapping, Sequence

import numpy as np

from roro_jax.engines.base import EngineError, SamplingParams, StepRequest, StepResult
from roro_jax.engines.hf_folder import HFTokenizerMixin, count_params, load_tokenizer
from roro_jax.engines.vllm_results import (MalformedResponseError, map_finish_reason, topk_arrays,
                                           validate_params)

__all__ = [
    "EndpointUnavailableError", "EngineError", "EngineRequestError", "MalformedResponseError",
    "OpenAIServerEngine", "count_params", "load_tokenizer", "map_finish_reason", "topk_arrays",
]

_TOKEN_ID_PREFIX = "token_id:"


class EndpointUnavailableError(EngineError):
    """No endpoint answered after all retries (connection errors, timeouts, 5xx)."""


class EngineRequestError(EngineError):
    """The server rejected the request (HTTP 4xx other than 429): retrying would not help."""


# --------------------------------------------------------------------------- the engine
# (shared with vllm_offline: the HF tokenizer and parameter count in roro_jax.engines.hf_folder, vLLM's finish
# reasons, top-k arrays and sampling limits in roro_jax.engines.vllm_results)
class _Endpoint:
    __slots__ = ("url", "in_flight", "failures", "requests", "errors")

    def __init__(self, url: str):
        self.url, self.in_flight, self.failures, self.requests = url, 0, 0, 0
        self.errors: collections.Counter[str] = collections.Counter()  # failed attempts by error type


class _LoopState:
    """Clients and the semaphore of one event loop (httpx clients must not cross loops)."""

    def __init__(self, engine: "OpenAIServerEngine"):
        import openai

        self.loop = asyncio.get_running_loop()
        self.sem = asyncio.Semaphore(engine.concurrency)
        self.clients = {ep.url: openai.AsyncOpenAI(base_url=ep.url, api_key=engine.api_key, max_retries=0,
                                                   timeout=engine.timeout) for ep in engine.endpoints}


class OpenAIServerEngine(HFTokenizerMixin):
    """A :class:`~roro_jax.engines.base.StepEngine` over one model served by one or more vLLM servers.

    Args:
      model: the served model name (``vllm serve ... --served-model-name``).
      endpoints: base URLs, e.g. ``["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"]``.
      tokenizer_path: the model's tokenizer (HF folder or tokenizer.json) for :meth:`encode`/:meth:`decode`;
        loaded on first use.
      n_params: parameter count for FLOPs (``None``: counted from ``tokenizer_path``'s safetensors if it
        is a model folder, else 0).
      concurrency: most requests in flight at once (all endpoints together).
      timeout: seconds per attempt.
      max_retries: retries after the first attempt (connection errors, timeouts, 429/5xx, aborts).
      backoff, max_backoff: first retry delay and its cap, in seconds (doubling, jittered x[0.5, 1]).
      retry_budget: most retried attempts over the engine's life, all requests together (``None``: only
        the per-request ``max_retries`` bound).
      api_key: sent as the bearer token (vLLM ignores it unless started with ``--api-key``).
      extra_body: more vLLM request fields (e.g. ``{"repetition_penalty": 1.1}``).
    """

    name = "openai_server"

    def __init__(self, model: str, endpoints: Sequence[str] | str, tokenizer_path: str | os.PathLike | None = None,
                 *, n_params: float | None = None, concurrency: int = 64, timeout: float = 120.0,
                 max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 8.0,
                 retry_budget: int | None = None, api_key: str = "EMPTY",
                 extra_body: Mapping[str, Any] | None = None, seed: int | None = None):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("OpenAIServerEngine: at least one endpoint is required")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or (retry_budget is not None and retry_budget < 0):
            raise ValueError("OpenAIServerEngine: need concurrency >= 1, max_retries >= 0, timeout > 0, "
                             "retry_budget None or >= 0")
        self.model = model
        self.endpoints = [_Endpoint(u.rstrip("/")) for u in endpoints]
        self.tokenizer_path = str(tokenizer_path) if tokenizer_path else None
        if n_params is None:
            try:
                n_params = float(count_params(self.tokenizer_path)) if self.tokenizer_path else 0.0
            except (FileNotFoundError, NotADirectoryError):
                n_params = 0.0
        self.n_params = float(n_params)
        self.concurrency, self.timeout, self.max_retries = int(concurrency), float(timeout), int(max_retries)
        self.backoff, self.max_backoff, self.api_key = float(backoff), float(max_backoff), api_key
        self.extra_body = dict(extra_body or {})
        self._rr = itertools.count()
        self._state: _LoopState | None = None
        self._jitter = random.Random(seed)
        self.retry_budget = None if retry_budget is None else int(retry_budget)
        self.retries = 0  # retried attempts so far, all requests together
        self.latencies: collections.deque[float] = collections.deque(maxlen=100_000)
        self.backoff_delays: collections.deque[float] = collections.deque(maxlen=100_000)

    # ------------------------------------------------------------------ plumbing
    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop or self._state.loop.is_closed():
            self._state = _LoopState(self)
        return self._state

    def _pick(self, avoid: set[str]) -> _Endpoint:
        cands = [ep for ep in self.endpoints if ep.url not in avoid] or self.endpoints
        turn = next(self._rr)
        n = len(cands)
        order = [cands[(turn + i) % n] for i in range(n)]  # rotate so ties go round robin
        return min(order, key=lambda ep: ep.in_flight)

    def stats(self) -> dict[str, dict]:
        """Per endpoint: attempts sent (``requests``), failed attempts (``failures``, and ``errors`` by
        error type), currently in flight."""
        return {ep.url: {"requests": ep.requests, "failures": ep.failures, "in_flight": ep.in_flight,
                         "errors": dict(ep.errors)} for ep in self.endpoints}

    def latency_stats(self) -> dict[str, float]:
        """End-to-end request latency (seconds, retries included) of the finished requests: count, p50,
        p90, p99, max."""
        lat = np.asarray(self.latencies, np.float64)
        if lat.size == 0:
            return {"count": 0}
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"count": int(lat.size), "p50": float(p50), "p90": float(p90), "p99": float(p99),
                "max": float(lat.max())}

    def _body(self, req: StepRequest, params: SamplingParams) -> dict[str, Any]:
        extra = {"include_stop_str_in_output": True, "return_token_ids": True,
                 "return_tokens_as_token_ids": True, "skip_special_tokens": True}
        if params.top_k and params.top_k > 0:
            extra["top_k"] = int(params.top_k)
        extra.update(self.extra_body)
        return dict(model=self.model, prompt=list(map(int, req.prompt_ids)), max_tokens=int(params.max_tokens),
                    temperature=float(params.temperature), top_p=float(params.top_p),
                    logprobs=int(params.logprobs), stop=list(params.stop) or None, seed=int(req.seed),
                    extra_body=extra)

    # ------------------------------------------------------------------ API
    async def generate(self, requests: Sequence[StepRequest], params: SamplingParams) -> list[StepResult]:
        """One step for each request, concurrently (bounded by ``concurrency``); results in order.

        If any request fails for good, the others are cancelled and the first error is raised.
        """
        validate_params(params)
        if not requests:
            return []
        st = self._loop_state()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._one(st, r, params)) for r in requests]
        except BaseExceptionGroup as eg:  # surface the first engine error as itself
            first = eg.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        return [t.result() for t in tasks]

    async def _one(self, st: _LoopState, req: StepRequest, params: SamplingParams) -> StepResult:
        import openai

        body = self._body(req, params)
        tried: list[str] = []
        last_err: BaseException | None = None
        budget_spent = False
        async with st.sem:
            t_req = time.perf_counter()
            for attempt in range(self.max_retries + 1):
                ep = self._pick(set(tried[-1:]))
                tried.append(ep.url)
                ep.in_flight += 1
                ep.requests += 1
                t0 = time.perf_counter()
                try:
                    resp = await st.clients[ep.url].completions.create(**body)
                    result = self._parse(resp, ep.url, req, params, attempts=attempt + 1,
                                         latency=time.perf_counter() - t0)
                    self.latencies.append(time.perf_counter() - t_req)
                    return result
                except _Retryable as e:
                    last_err = e.cause
                except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as e:
                    last_err = e
                except (json.JSONDecodeError, openai.APIResponseValidationError) as e:  # garbled transfer
                    last_err = MalformedResponseError(f"{ep.url}: undecodable response body: {e}")
                except openai.APIStatusError as e:
                    raise EngineRequestError(f"{ep.url}: model {self.model!r} rejected request "
                                             f"{req.request_id or '?'} (HTTP {e.status_code}): "
                                             f"{_short(e.message)}") from e
                finally:
                    ep.in_flight -= 1
                ep.failures += 1
                ep.errors[type(last_err).__name__] += 1
                if attempt < self.max_retries:
                    if self.retry_budget is not None and self.retries >= self.retry_budget:
                        budget_spent = True
                        break
                    self.retries += 1
                    delay = min(self.max_backoff, self.backoff * 2 ** attempt) * self._jitter.uniform(0.5, 1.0)
                    self.backoff_delays.append(delay)
                    await asyncio.sleep(delay)
        tried_s = ", ".join(dict.fromkeys(tried))
        why = f" (the engine's retry budget of {self.retry_budget} retries is spent)" if budget_spent else ""
        raise EndpointUnavailableError(
            f"model {self.model!r}: request {req.request_id or '?'} failed after {len(tried)} attempts{why} "
            f"on {tried_s}; last error: {type(last_err).__name__}: {_short(str(last_err))}"
        ) from last_err

    def _parse(self, resp: Any, url: str, req: StepRequest, params: SamplingParams, *, attempts: int,
               latency: float) -> StepResult:
        def bad(what: str) -> MalformedResponseError:
            return MalformedResponseError(f"{url}: malformed completion for model {self.model!r} "
                                          f"(request {req.request_id or '?'}): {what}")

        choices = getattr(resp, "choices", None)
        if not choices:
            raise bad("no choices")
        c = choices[0]
        fr = getattr(c, "finish_reason", None)
        if fr == "abort":  # the server aborted the generation (e.g. shutting down): try again
            raise _Retryable(EngineError(f"{url}: generation aborted"))
        stop_reason = getattr(c, "stop_reason", None)
        try:
            finish = map_finish_reason(fr, stop_reason)
        except ValueError as e:
            raise bad(str(e)) from None
        text = getattr(c, "text", None)
        if not isinstance(text, str):
            raise bad("no text")
        lp = getattr(c, "logprobs", None)
        chosen = getattr(lp, "token_logprobs", None) if lp is not None else None
        tokens = getattr(lp, "tokens", None) if lp is not None else None
        tops = getattr(lp, "top_logprobs", None) if lp is not None else None
        if chosen is None or tokens is None:
            raise bad("no logprobs (token_logprobs/tokens) in the choice")
        ids = getattr(c, "token_ids", None)
        if ids is None:  # an older vLLM without return_token_ids: recover ids from "token_id:N" tokens
            try:
                ids = [_parse_token_key(t, None) for t in tokens]
            except ValueError:
                raise bad("no token_ids (return_token_ids) and tokens are not 'token_id:N'") from None
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise bad(f"token_ids is not a list of ints: {str(ids)[:80]}")
        L = len(ids)
        if len(chosen) != L or len(tokens) != L:
            raise bad(f"{L} token_ids but {len(chosen)} token_logprobs / {len(tokens)} tokens")
        if any(x is None for x in chosen):
            raise bad("a generated token has no logprob")
        k = params.logprobs
        if k > 0:
            if tops is None or len(tops) != L:
                raise bad(f"top_logprobs has {None if tops is None else len(tops)} rows for {L} tokens")
            try:
                top_dicts = [{_parse_token_key(key, self): float(v) for key, v in (row or {}).items()}
                             for row in tops]
            except ValueError as e:
                raise bad(str(e)) from None
        else:
            top_dicts = [{} for _ in range(L)]
        top_lp, top_ids = topk_arrays(top_dicts, k)
        if L > params.max_tokens:
            raise bad(f"{L} tokens > max_tokens={params.max_tokens}")
        return StepResult(
            token_ids=[int(t) for t in ids], text=text, finish_reason=finish,
            logprobs=np.asarray(chosen, np.float32), top_logprobs=top_lp,
            meta={"endpoint": url, "model": self.model, "attempts": attempts, "latency_s": latency,
                  "stop_reason": stop_reason, "request_id": req.request_id, "top_ids": top_ids,
                  "prompt_tokens": len(req.prompt_ids)})

    async def aclose(self) -> None:
        st, self._state = self._state, None
        if st is None:
            return
        for client in st.clients.values():
            try:
                await client.close()
            except RuntimeError:  # its loop is gone
                pass

    def __repr__(self) -> str:
        return f"OpenAIServerEngine(model={self.model!r}, endpoints={[e.url for e in self.endpoints]})"


class _Retryable(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _parse_token_key(key: str, engine: HFTokenizerMixin | None) -> int:
    """``"token_id:123"`` -> 123; a plain token string -> its id through the engine's tokenizer."""
    if isinstance(key, str) and key.startswith(_TOKEN_ID_PREFIX):
        try:
            return int(key[len(_TOKEN_ID_PREFIX):])
        except ValueError:
            raise ValueError(f"bad token key {key!r}") from None
    if engine is None or not engine.tokenizer_path:
        raise ValueError(f"token key {key!r} is not 'token_id:N' and there is no tokenizer to map it")
    ids = engine.encode(key, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"token string {key!r} does not map to one token id ({ids})")
    return ids[0]


def _short(s: str, n: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."
