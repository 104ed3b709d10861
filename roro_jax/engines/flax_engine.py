"""The in-process ``flax`` step engine: :class:`~roro_jax.models.sampler.Sampler` behind the async
:class:`~roro_jax.engines.base.StepEngine` protocol.

**Batching across callers.** The routing rollout runs every trajectory as its own coroutine and each
asks for *one* step at a time. The engine therefore merges whatever is pending into one batch: calls to
:meth:`FlaxEngine.generate` only enqueue their requests and await futures; a single dispatcher task per
event loop waits one loop tick (so every coroutine that became ready in the same tick has enqueued),
takes up to ``max_batch`` pending requests (each keeps its own :class:`SamplingParams`), runs them in a
worker thread (``asyncio.to_thread``, so the event loop and the other engine stay free) and resolves the
futures. While a batch runs, new requests accumulate for the next one. Requests never wait on one
another beyond that: a batch is started as soon as the previous one ends.

**Static shapes.** The sampler rounds batch size, prompt length and new-token budget up to powers of two
(with minimums ``min_prompt_bucket``/``min_new_bucket``) and passes everything that varies per request
(seed, stop strings, token budget) as traced arrays, so a new call only compiles when it lands in a new
shape bucket (:attr:`FlaxEngine.num_compiles`). :meth:`FlaxEngine.warmup` compiles the buckets a run
will use ahead of time.

**Numbers.** Token ``t`` of a request draws with ``fold_in(key(seed), t)`` inside the sampler, so a
request's tokens depend on its seed and prompt, not on what else shares its batch. Log-probs are those
of the model's raw distribution (as vLLM reports them); ``top_logprobs`` is ``[L, k]`` sorted best first.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from roro_jax.buckets import bucket
from roro_jax.engines.base import SamplingParams, StepRequest, StepResult


@dataclass
class _Pending:
    request: StepRequest
    params: SamplingParams
    future: asyncio.Future


class FlaxEngine:
    """Generate steps in-process with a Flax NNX decoder.

    Args:
      model: a Hugging Face model folder (loaded with :func:`roro_jax.models.from_pretrained`), or a
        ``(model, tokenizer)`` pair (a :class:`~roro_jax.models.Decoder` and a transformers tokenizer).
      n_params: parameter count used for FLOPs; default: counted from the model.
      max_batch: most requests per compiled call (larger sets are split).
      batch_buckets: allowed batch sizes; a batch is padded with idle one-token rows up to the smallest
        bucket that holds it, so only these sizes ever compile (default: powers of two, the sampler's).
        ``(max_batch,)`` means exactly one compiled batch shape.
      min_prompt_bucket, min_new_bucket: smallest prompt-length / new-token buckets (powers of two above).
      eos_token_ids: ids that end a step with ``finish_reason="eos"`` (default: config + tokenizer EOS).
      name: the engine's name in records.
      dtype: compute dtype when loading from a folder.
    """

    def __init__(self, model: str | os.PathLike | tuple[Any, Any], *, n_params: float | None = None,
                 max_batch: int = 64, batch_buckets: Sequence[int] | None = None, min_prompt_bucket: int = 32, min_new_bucket: int = 16,
                 eos_token_ids: Sequence[int] | None = None, name: str = "flax", dtype=None):
        from roro_jax.models import from_pretrained, param_count
        from roro_jax.models.sampler import Sampler

        if isinstance(model, (str, os.PathLike)):
            import jax.numpy as jnp

            self.source = str(model)
            model, tokenizer = from_pretrained(model, dtype=dtype or jnp.float32)
            if tokenizer is None:
                raise ValueError(f"FlaxEngine: {self.source} has no tokenizer (tokenizer.json)")
        elif isinstance(model, tuple) and len(model) == 2:
            model, tokenizer = model
            self.source = "in-memory"
            if tokenizer is None:
                raise ValueError("FlaxEngine: a tokenizer is required (steps end at a text delimiter)")
        else:
            raise TypeError("FlaxEngine(model): pass a model folder or a (model, tokenizer) pair, got "
                            f"{type(model).__name__}")
        if max_batch < 1:
            raise ValueError(f"FlaxEngine: max_batch={max_batch} must be >= 1")
        if batch_buckets is not None:
            batch_buckets = tuple(sorted({int(b) for b in batch_buckets}))
            if not batch_buckets or batch_buckets[0] < 1 or batch_buckets[-1] < max_batch:
                raise ValueError(f"FlaxEngine: batch_buckets={batch_buckets} must be positive and reach "
                                 f"max_batch={max_batch}")
        self.batch_buckets = batch_buckets
        vocab = model.config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(f"FlaxEngine: tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                             f"is {vocab}")
        self.name = name
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_batch = int(max_batch)
        self.n_params = float(param_count(model) if n_params is None else n_params)
        self.sampler = Sampler(model, tokenizer, eos_token_ids=eos_token_ids,
                               min_prompt_bucket=min_prompt_bucket, min_new_bucket=min_new_bucket,
                               pad_id=int(model.config.pad_token_id or 0))
        self._pending: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokenizer_key: str | None = None
        self.stats = {"calls": 0, "batches": 0, "rows": 0, "tokens": 0, "busy_s": 0.0}

    # ------------------------------------------------------------------ tokenizer
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model sees a prompt (special tokens such as BOS added)."""
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def tokenizer_key(self) -> str:
        """A fingerprint of the tokenizer: engines with equal keys encode any text to the same ids."""
        if self._tokenizer_key is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            blob = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
            self._tokenizer_key = hashlib.sha1(blob.encode()).hexdigest()
        return self._tokenizer_key

    @property
    def num_compiles(self) -> int:
        """Distinct shape buckets compiled so far."""
        return self.sampler.num_compiles

    def update(self, model) -> None:
        """Generate with ``model``'s current weights from now on (same structure, no recompile)."""
        self.sampler.update(model)

    # ------------------------------------------------------------------ generation
    def _sampler_params(self, params: SamplingParams, seed: int):
        from roro_jax.models.sampler import SamplingParams as SP

        return SP(max_new_tokens=int(params.max_tokens), temperature=float(params.temperature),
                  top_p=float(params.top_p), top_k=int(params.top_k), seed=int(seed) & 0xFFFFFFFF,
                  stop=tuple(params.stop), logprobs=int(params.logprobs), include_stop_str_in_output=True)

    def generate_sync(self, requests: Sequence[StepRequest], params: SamplingParams) -> list[StepResult]:
        """Generate one step per request, blocking (chunks of ``max_batch``)."""
        return self._generate_rows(requests, [params] * len(requests))

    def _generate_rows(self, requests: Sequence[StepRequest], params: Sequence[SamplingParams]) -> list[StepResult]:
        import time

        out: list[StepResult] = []
        for i in range(0, len(requests), self.max_batch):
            chunk = requests[i:i + self.max_batch]
            for r in chunk:
                if not r.prompt_ids:
                    raise ValueError(f"FlaxEngine: request {r.request_id!r} has an empty prompt")
            prompts = [r.prompt_ids for r in chunk]
            sps = [self._sampler_params(p, r.seed) for p, r in zip(params[i:i + self.max_batch], chunk)]
            if self.batch_buckets is not None:
                size = bucket(len(chunk), ladder=self.batch_buckets)
                idle = replace(sps[0], max_new_tokens=1, logprobs=sps[0].logprobs)
                prompts += [prompts[0]] * (size - len(chunk))
                sps += [idle] * (size - len(chunk))
            t0 = time.perf_counter()
            comps = self.sampler.generate(prompts, sps)[:len(chunk)]
            self.stats["busy_s"] += time.perf_counter() - t0
            self.stats["batches"] += 1
            self.stats["rows"] += len(chunk)
            for r, c in zip(chunk, comps):
                self.stats["tokens"] += len(c.token_ids)
                out.append(StepResult(
                    token_ids=list(c.token_ids), text=c.text, finish_reason=c.finish_reason,
                    logprobs=np.asarray(c.logprobs, np.float32),
                    top_logprobs=np.asarray(c.top_logprobs, np.float32).reshape(len(c.token_ids), -1),
                    meta={"request_id": r.request_id, "engine": self.name, "stop_str": c.stop_str},
                ))
        return out

    async def generate(self, requests: Sequence[StepRequest], params: SamplingParams) -> list[StepResult]:
        """Enqueue the requests; they run in the next batch(es) together with other callers' requests."""
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        self._ensure_dispatcher(loop)
        futs = []
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"FlaxEngine: request {r.request_id!r} has an empty prompt")
            fut = loop.create_future()
            self._pending.append(_Pending(r, params, fut))
            futs.append(fut)
        self.stats["calls"] += 1
        self._wakeup.set()
        return list(await asyncio.gather(*futs))

    def _ensure_dispatcher(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop or self._dispatcher is None or self._dispatcher.done():
            if self._dispatcher is not None and self._loop is loop and self._dispatcher.done():
                exc = None if self._dispatcher.cancelled() else self._dispatcher.exception()
                if exc is not None:
                    raise RuntimeError("FlaxEngine: the dispatcher died") from exc
            self._loop = loop
            self._pending = [p for p in self._pending if p.future.get_loop() is loop]
            self._wakeup = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch(), name=f"{self.name}-dispatcher")

    def _take_batch(self) -> list[_Pending]:
        """Up to ``max_batch`` pending requests, oldest first, whatever their sampling params (the sampler
        takes per-row params); within the batch, rows are ordered by prompt length."""
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        return sorted(batch, key=lambda p: len(p.request.prompt_ids))

    async def _dispatch(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await asyncio.sleep(0)  # let every coroutine that is ready in this tick enqueue
            batch = [p for p in self._take_batch() if not p.future.cancelled()]
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._generate_rows, [p.request for p in batch],
                                                  [p.params for p in batch])
            except Exception as e:  # noqa: BLE001 - handed to every caller of this batch
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, res in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(res)

    async def warmup(self, prompt_lengths: Sequence[int], batch_sizes: Sequence[int],
                     params: SamplingParams) -> int:
        """Compile the buckets for these prompt lengths and batch sizes now; returns compiles added."""
        before = self.num_compiles
        for n in batch_sizes:
            for L in prompt_lengths:
                reqs = [StepRequest([1] * max(int(L), 1), seed=i) for i in range(int(n))]
                await asyncio.to_thread(self.generate_sync, reqs, params)
        return self.num_compiles - before

    async def aclose(self) -> None:
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()
            try:
                await self._dispatcher
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for p in self._pending:
            if not p.future.done():
                p.future.cancel()
        self._pending = []
        self._dispatcher = None

    def __repr__(self) -> str:
        c = self.config
        return (f"FlaxEngine(name={self.name!r}, source={self.source!r}, layers={c.num_layers}, "
                f"hidden={c.hidden_size}, n_params={self.n_params:.3g}, max_batch={self.max_batch})")


# ---------------------------------------------------------------------------------------------------------
def synthetic_step_lm(tokenizer, *, hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      seed: int = 0, newline: float = 0.15, double_newline: float = 0.35, answer: float = 0.04,
                      eos: float = 0.003, concentration: float = 0.5, embed_scale: float = 30.0):
    """A tiny Llama (:class:`~roro_jax.models.Decoder`) that writes step-structured text, for tests and
    benchmarks of the routing loop before trained models exist.

    Its layers are random (``init_model``), but the embedding is a scaled one-hot (``hidden`` must be at
    least the vocabulary) that dominates the residual stream and the output projection holds a designed
    *bigram* table, so the next-token distribution is (up to the small random-layer perturbation) a
    function of the current token:

    - after a content token (digits, spaces, ``+ - * =``): ``"\\n"`` with prob. ``newline``, EOS with
      ``eos``, else a content token from a per-token Dirichlet(``concentration``) distribution (seeded:
      small concentrations give peaky, confident rows; large ones flat, unconfident rows);
    - after ``"\\n"``: ``"\\n"`` again with ``double_newline`` (so a step ends at ``"\\n\\n"``, and a step can
      also start with an empty ``"\\n\\n"``), the start of ``"Answer: "`` with ``answer``, else content;
    - ``"Answer: "`` is a deterministic chain, followed by content.

    Steps therefore have variable lengths, end at the delimiter, at EOS or at the token limit, and some
    trajectories write an answer line. The compute per token is that of a real decoder of this size.
    """
    import jax.numpy as jnp

    from roro_jax.models import DecoderConfig, init_model

    vocab = len(tokenizer)
    if hidden < vocab:
        raise ValueError(f"synthetic_step_lm: hidden={hidden} must be >= the vocabulary ({vocab})")
    ids = tokenizer.get_vocab()

    def tid(ch: str) -> int:
        if ch not in ids:
            raise ValueError(f"synthetic_step_lm: the tokenizer has no single token for {ch!r}")
        return ids[ch]

    content = [tid(c) for c in "0123456789 +-*="]
    nl = tid("\n")
    eos_id = tokenizer.eos_token_id
    chain = [tid(c) for c in "Answer:"] + [tid(" ")]
    rng = np.random.default_rng(seed)
    probs = np.zeros((vocab, vocab), np.float64)
    for t in range(vocab):
        row = np.zeros(vocab)
        row[content] = rng.dirichlet(np.full(len(content), concentration))
        if t == nl:
            row *= 1.0 - double_newline - answer
            row[nl] += double_newline
            row[chain[0]] += answer
        else:
            row *= 1.0 - newline - (eos if eos_id is not None else 0.0)
            row[nl] += newline
            if eos_id is not None:
                row[eos_id] += eos
        probs[t] = row
    for a, b in zip(chain[:-1], chain[1:]):
        probs[a] = 0.0
        probs[a, b] = 1.0
    logp = np.log(np.maximum(probs, 1e-9))
    cfg = DecoderConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                        num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                        eos_token_ids=() if eos_id is None else (int(eos_id),),
                        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id or 0)
    model = init_model(cfg, seed=seed)
    emb = np.zeros((vocab, hidden), np.float32)
    emb[np.arange(vocab), np.arange(vocab)] = embed_scale
    model.embed.embedding[...] = jnp.asarray(emb)
    model.norm.scale[...] = jnp.ones((hidden,), jnp.float32)
    # RMSNorm(embed_scale * e_i) ~= sqrt(hidden) * e_i, so row i of the kernel / sqrt(hidden) gives the logits.
    kernel = np.zeros((hidden, vocab), np.float32)
    kernel[:vocab] = (logp / np.sqrt(hidden)).astype(np.float32)
    model.lm_head.kernel[...] = jnp.asarray(kernel)
    return model
