"""``vllm_offline`` engine: ``vllm.LLM`` in this process, with the same outputs as ``openai_server``.

``vllm`` is imported when the engine is constructed, never at module import, so the rest of the package
works without it (on this CPU machine vLLM lives in its own venv: ``scripts/setup_vllm_cpu.sh``).

**Batching across callers.** The routing rollout asks for one step per trajectory at a time, from many
coroutines. :meth:`VLLMOfflineEngine.generate` therefore only enqueues its requests and awaits them; one
dispatcher task per event loop waits one loop tick (so every coroutine ready in the same tick has
enqueued), takes up to ``max_batch`` pending requests and runs them as *one* ``LLM.generate`` call in a
worker thread (the event loop stays free), each request with its own ``vllm.SamplingParams`` (its seed,
the step delimiter as ``stop`` with ``include_stop_str_in_output=True``, ``logprobs=k``). Requests that
arrive while a batch runs form the next batch. ``LLM`` calls are serialised by a lock (it is not
thread-safe). If ``LLM.generate`` raises, every request of that batch gets the exception.

Finish reasons and log-prob arrays follow :mod:`roro_jax.engines.openai_server` (shared helpers in
:mod:`roro_jax.engines.vllm_results`; the tokenizer and parameter count in :mod:`roro_jax.engines.hf_folder`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from roro_jax.engines.base import SamplingParams, StepRequest, StepResult
from roro_jax.engines.hf_folder import HFTokenizerMixin, count_params
from roro_jax.engines.vllm_results import MalformedResponseError, map_finish_reason, topk_arrays, validate_params

__all__ = ["VLLMOfflineEngine"]


class VLLMOfflineEngine(HFTokenizerMixin):
    """A :class:`~roro_jax.engines.base.StepEngine` over an in-process ``vllm.LLM``.

    Args:
      model: model folder (or name vLLM can resolve).
      tokenizer_path: tokenizer for :meth:`encode`/:meth:`decode` (default: ``model``).
      n_params: parameter count for FLOPs (``None``: counted from the folder's safetensors, else 0).
      dtype, max_model_len, seed: passed to ``vllm.LLM``.
      max_batch: most requests per ``LLM.generate`` call.
      llm_kwargs: any other ``vllm.LLM`` arguments (e.g. ``{"enforce_eager": True}``,
        ``{"tensor_parallel_size": 2}``).
    """

    name = "vllm_offline"

    def __init__(self, model: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None, *,
                 n_params: float | None = None, dtype: str = "auto", max_model_len: int | None = None,
                 seed: int = 0, max_batch: int = 256, llm_kwargs: Mapping[str, Any] | None = None):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("the vllm_offline engine needs vLLM (`pip install vllm`; on CPU see "
                              "scripts/setup_vllm_cpu.sh and run inside that venv)") from e
        self._vllm = vllm
        self.model = str(model)
        self.tokenizer_path = str(tokenizer_path or model)
        if n_params is None:
            try:
                n_params = float(count_params(self.model))
            except (FileNotFoundError, NotADirectoryError):
                n_params = 0.0
        self.n_params = float(n_params)
        kw = dict(model=self.model, dtype=dtype, seed=seed, **(llm_kwargs or {}))
        if max_model_len is not None:
            kw["max_model_len"] = max_model_len
        self.llm = vllm.LLM(**kw)
        self._lock = threading.Lock()
        self.max_batch = int(max_batch)
        self._pending: list[tuple[StepRequest, SamplingParams, asyncio.Future]] = []
        self._dispatcher: asyncio.Task | None = None
        self.stats = {"calls": 0, "batches": 0, "requests": 0}
        if not Path(self.tokenizer_path).exists():  # a hub name: use the engine's own tokenizer
            self._tok = self.llm.get_tokenizer()

    def _sampling(self, req: StepRequest, params: SamplingParams):
        return self._vllm.SamplingParams(
            n=1, max_tokens=int(params.max_tokens), temperature=float(params.temperature),
            top_p=float(params.top_p), top_k=int(params.top_k) if params.top_k > 0 else 0,
            stop=list(params.stop) or None, include_stop_str_in_output=True, logprobs=int(params.logprobs),
            seed=int(req.seed), skip_special_tokens=True)

    def generate_sync(self, requests: Sequence[StepRequest], params: SamplingParams) -> list[StepResult]:
        """The blocking form of :meth:`generate` (one ``LLM.generate`` call)."""
        validate_params(params)
        return self._run([(r, params) for r in requests])

    def _run(self, items: Sequence[tuple[StepRequest, SamplingParams]]) -> list[StepResult]:
        if not items:
            return []
        if self.llm is None:
            raise RuntimeError("VLLMOfflineEngine: the engine is closed")
        prompts = [{"prompt_token_ids": [int(t) for t in r.prompt_ids]} for r, _ in items]
        sps = [self._sampling(r, p) for r, p in items]
        t0 = time.perf_counter()
        with self._lock:
            outs = self.llm.generate(prompts, sps, use_tqdm=False)
        latency = time.perf_counter() - t0
        self.stats["batches"] += 1
        self.stats["requests"] += len(items)
        if len(outs) != len(items):
            raise MalformedResponseError(f"vllm.LLM.generate returned {len(outs)} outputs for "
                                         f"{len(items)} prompts")
        return [self._result(o, r, p, latency) for o, (r, p) in zip(outs, items)]

    def _result(self, out: Any, req: StepRequest, params: SamplingParams, latency: float) -> StepResult:
        c = out.outputs[0]
        ids = [int(t) for t in c.token_ids]
        k = params.logprobs
        chosen, tops = [], []
        positions = list(c.logprobs) if c.logprobs is not None else None
        if positions is None or len(positions) != len(ids):
            raise MalformedResponseError(f"vllm_offline: {len(ids)} tokens but "
                                         f"{None if positions is None else len(positions)} log-prob rows")
        for tid, pos in zip(ids, positions):
            d = {int(t): float(lp.logprob) for t, lp in pos.items()}
            chosen.append(d[tid])
            tops.append(d)
        top_lp, top_ids = topk_arrays(tops, k)
        return StepResult(
            token_ids=ids, text=c.text, finish_reason=map_finish_reason(c.finish_reason, c.stop_reason),
            logprobs=np.asarray(chosen, np.float32), top_logprobs=top_lp,
            meta={"model": self.model, "stop_reason": c.stop_reason, "request_id": req.request_id,
                  "top_ids": top_ids, "prompt_tokens": len(req.prompt_ids), "latency_s": latency})

    async def generate(self, requests: Sequence[StepRequest], params: SamplingParams) -> list[StepResult]:
        """One step per request, in order; merged with other callers' pending requests (module doc)."""
        validate_params(params)
        if not requests:
            return []
        self.stats["calls"] += 1
        loop = asyncio.get_running_loop()
        futs = []
        for r in requests:
            fut = loop.create_future()
            self._pending.append((r, params, fut))
            futs.append(fut)
        if self._dispatcher is None or self._dispatcher.done() or self._dispatcher.get_loop() is not loop:
            self._dispatcher = loop.create_task(self._dispatch())
        return list(await asyncio.gather(*futs))

    async def _dispatch(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let every coroutine that is ready in this tick enqueue first
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            batch = [b for b in batch if not b[2].done()]  # drop cancelled callers
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._run, [(r, p) for r, p, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, _, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)

    async def aclose(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                await asyncio.to_thread(shutdown)
            del llm

    def __repr__(self) -> str:
        return f"VLLMOfflineEngine(model={self.model!r})"
