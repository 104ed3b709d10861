"""Batched generation with a KV cache inside one jitted ``lax.while_loop``, with static, bucketed shapes.

Layout: prompts are **left-padded** to a common length ``P`` (a bucket), so every row's next token is read
at the same slot; positions come from the prompt mask, so padding does not change a row's numbers. The
cache has ``P + N`` slots (``N`` = bucketed max new tokens); generated token ``t`` is written at slot
``P + t``. Batch size, ``P`` and ``N`` are rounded up to powers of two (batch padded with idle rows), and
everything that varies per request (temperature, top-p, top-k, seed, max new tokens, EOS handling, which
stop strings apply) is a traced array, so a new request only compiles when it lands in a new bucket.

Per row: temperature (0 = greedy), top-k (0 = off), then top-p on the top-k-filtered distribution, a
seed (token ``t`` of a row draws with ``fold_in(key(seed), t)``, so results do not depend on what else is
in the batch), max new tokens, stop strings (matched on decoded text, across token boundaries, see
:mod:`roro_jax.models.stopping`), stop token ids and EOS. Reported log-probs (chosen token and top-k, k up
to 20) are those of the model's raw distribution (``log_softmax`` of the unscaled logits), as vLLM reports.

Finish reasons: ``"eos"`` (an EOS id was sampled), ``"stop"`` (a stop string or stop token id), ``"length"``
(max new tokens). The EOS or stop token is included in ``token_ids``; ``text`` is the decoding of
``token_ids`` (special tokens skipped), cut right after the first occurrence of the stop string that ends
in the last token (or before it when ``include_stop_str_in_output=False``). Stop strings are matched on the
raw text (special tokens included, see :mod:`roro_jax.models.stopping`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend.random import threefry2x32_p

from roro_jax.buckets import bucket
from roro_jax.models.decoder import Decoder
from roro_jax.models.stopping import stop_tables_for, token_texts

MAX_TOP_LOGPROBS = 20
CANDIDATES = 256  # largest logits a top-k / top-p draw looks at (see _choose)
FINISH_REASONS = ("length", "stop", "eos")  # index = code used inside the loop


@dataclass(frozen=True)
class SamplingParams:
    """What to generate for one prompt (all fields may differ between rows of one batch)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int = 0
    ignore_eos: bool = False
    include_stop_str_in_output: bool = True

    def __post_init__(self):
        if not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs={self.logprobs} must be in [0, {MAX_TOP_LOGPROBS}]")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"bad sampling settings: temperature={self.temperature}, top_p={self.top_p}, "
                             f"top_k={self.top_k}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))


@dataclass
class Completion:
    """One row's result. ``top_ids``/``top_logprobs`` are [n_tokens, logprobs] (empty when logprobs=0)."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    stop_str: str | None = None


# --------------------------------------------------------------------------- jitted core
def _filter_sorted(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Reference filter over a full sort of the vocabulary (exact for any top-k / top-p; slow on CPU)."""
    vocab = scaled.shape[-1]
    sorted_desc = -jnp.sort(-scaled, axis=-1)
    idx = jnp.arange(vocab)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)[:, None]
    sorted_desc = jnp.where(idx < k, sorted_desc, -jnp.inf)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = ((mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)) & (idx < k)  # float cumsum may hit 1
    n_keep = jnp.maximum(jnp.sum(keep, axis=-1), 1)
    threshold = jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def _candidate_threshold(scaled: jax.Array, cand: jax.Array, top_k: jax.Array, top_p: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """Each row's keep-threshold from its largest logits ``cand`` [B, n] (descending, from ``lax.top_k``).

    Returns ``threshold`` [B] (keep the logits >= it; -inf for a row with no filter) and ``fits`` [B]: the
    row's kept set lies within its ``n`` candidates, so ``threshold`` is exact. A row whose top-k exceeds
    ``n`` or whose nucleus is wider than the candidates (a very flat distribution) does not fit, and neither
    does a row with no filter (it keeps the whole vocabulary).
    """
    vocab, n = scaled.shape[-1], cand.shape[-1]
    idx = jnp.arange(n)[None, :]
    top_k = jnp.where(top_k >= vocab, 0, top_k)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, n), n)[:, None]
    cand = jnp.where(idx < k, cand, -jnp.inf)
    # normaliser of the top-k-filtered distribution: the candidates alone when top-k fits in them
    lse = jnp.where(top_k > 0, jax.nn.logsumexp(cand, axis=-1), jax.nn.logsumexp(scaled, axis=-1))
    probs = jnp.exp(cand - lse[:, None])
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = ((mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)) & (idx < k)  # float cumsum may hit 1
    n_keep = jnp.maximum(jnp.sum(keep, axis=-1), 1)
    threshold = jnp.take_along_axis(cand, (n_keep - 1)[:, None], axis=-1)[:, 0]
    no_filter = (top_k == 0) & (top_p >= 1.0)
    threshold = jnp.where(no_filter, -jnp.inf, threshold)
    beyond = (top_k > n) | ((top_k == 0) & (top_p < 1.0) & (jnp.sum(probs, axis=-1) < top_p))
    return threshold, ~(beyond | no_filter)


def _gumbel(key_data: jax.Array, ids: jax.Array) -> jax.Array:
    """Gumbel noise [B, n] for token ``ids`` ([B, n] or [1, n]) under each row's key ``key_data`` [B, 2].

    The noise of a (key, token id) pair is a pure function of the two (Threefry-2x32 of the id), so
    drawing from a row's top candidates and from its whole vocabulary picks the same token.
    """
    ids = ids.astype(jnp.uint32)  # [B, n] or [1, n]: the primitive broadcasts (materialising is slower)
    hi, lo = threefry2x32_p.bind(key_data[:, :1], key_data[:, 1:], jnp.zeros_like(ids), ids)
    bits = hi ^ lo
    uniform = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - 1.0
    tiny = np.finfo(np.float32).tiny
    return -jnp.log(-jnp.log(jnp.maximum(uniform, tiny)))


def _choose(logits: jax.Array, rows: dict, step: jax.Array, candidates: int = CANDIDATES) -> jax.Array:
    """Token ``step`` of every row: greedy at temperature 0, else a Gumbel-max draw from the filtered,
    temperature-scaled distribution.

    When every sampling row's kept set lies within its ``candidates`` largest logits (the usual case with
    top-k or top-p), the draw looks at those candidates only; otherwise it looks at the whole vocabulary.
    Both give the same token (same per-token noise, exact filter), so a row's draw does not depend on the
    other rows of its batch.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    temp = rows["temperature"]
    no_filter = (rows["top_k"] == 0) & (rows["top_p"] >= 1.0)

    def keys_and_scaled(logits):
        scaled = logits / jnp.where(temp > 0, temp, 1.0)[:, None]
        keys = jax.vmap(lambda s: jax.random.key_data(jax.random.fold_in(jax.random.key(s), step)))(rows["seed"])
        return keys, scaled

    def vocabulary_ids(scaled):
        return jnp.arange(scaled.shape[-1], dtype=jnp.int32)[None, :]

    def sample_unfiltered(logits):
        keys, scaled = keys_and_scaled(logits)
        drawn = jnp.argmax(scaled + _gumbel(keys, vocabulary_ids(scaled)), axis=-1)
        return jnp.where(temp > 0, drawn, greedy).astype(jnp.int32)

    def sample(logits):
        keys, scaled = keys_and_scaled(logits)
        cand, cand_ids = jax.lax.top_k(scaled, min(candidates, scaled.shape[-1]))
        threshold, fits = _candidate_threshold(scaled, cand, rows["top_k"], rows["top_p"])

        def from_candidates(_):
            noisy = jnp.where(cand >= threshold[:, None], cand + _gumbel(keys, cand_ids), -jnp.inf)
            return jnp.take_along_axis(cand_ids, jnp.argmax(noisy, axis=-1)[:, None], axis=-1)[:, 0]

        def from_vocabulary(_):
            keep_all = no_filter[:, None]
            exact = jax.lax.cond(jnp.any(~fits & ~no_filter & (temp > 0)), _filter_sorted,
                                 lambda s, k_, p_: jnp.where(keep_all | (s >= threshold[:, None]), s, -jnp.inf),
                                 scaled, rows["top_k"], rows["top_p"])
            return jnp.argmax(exact + _gumbel(keys, vocabulary_ids(scaled)), axis=-1)

        drawn = jax.lax.cond(jnp.all(fits | (temp <= 0)), from_candidates, from_vocabulary, None)
        return jnp.where(temp > 0, drawn, greedy).astype(jnp.int32)

    # 0: every row greedy; 1: no sampling row filters; 2: some sampling row has top-k / top-p
    branch = jnp.where(jnp.any(temp > 0), jnp.where(jnp.any(~no_filter & (temp > 0)), 2, 1), 0)
    return jax.lax.switch(branch, [lambda _: greedy, sample_unfiltered, sample], logits)


def generate_arrays(model: Decoder, prompt: jax.Array, prompt_mask: jax.Array, rows: dict, tables: dict, *,
                    max_new: int, top_n: int) -> dict:
    """The whole generation as a pure function (jit it with ``max_new``/``top_n`` static).

    prompt/prompt_mask [B, P] (left padded); ``rows``: per-row arrays ``temperature, top_p, top_k, seed,
    max_new, ignore_eos`` [B] and ``stop_on`` [B, n_stop]; ``tables``: ``next_state, hit`` [n_stop, n_state,
    V], ``stop_token, eos`` [V] (bool). Returns tokens/logprobs [B, max_new], top_ids/top_logprobs
    [B, max_new, top_n], length [B], finish [B] (index into FINISH_REASONS), stop_index [B] (-1 if none).
    """
    b, p = prompt.shape
    cache = model.init_cache(b, p + max_new)
    logits, cache = model.prefill(prompt, prompt_mask, cache)
    kv_valid = jnp.concatenate([prompt_mask.astype(bool), jnp.zeros((b, max_new), bool)], axis=1)
    positions = jnp.sum(prompt_mask.astype(jnp.int32), axis=-1)
    n_stop = tables["next_state"].shape[0]
    rows_idx = jnp.arange(b)

    carry = dict(
        t=jnp.int32(0), tok=jnp.zeros((b,), jnp.int32), cache=cache, kv_valid=kv_valid, positions=positions,
        auto=jnp.zeros((b, n_stop), jnp.int32), done=rows["max_new"] <= 0,
        length=jnp.zeros((b,), jnp.int32), finish=jnp.zeros((b,), jnp.int32),
        stop_index=jnp.full((b,), -1, jnp.int32),
        tokens=jnp.zeros((b, max_new), jnp.int32), logprobs=jnp.zeros((b, max_new), jnp.float32),
        top_ids=jnp.zeros((b, max_new, top_n), jnp.int32),
        top_logprobs=jnp.zeros((b, max_new, top_n), jnp.float32),
    )

    def pick(c, logits):
        """Choose token ``t`` from its distribution ``logits``, record it and update the stop state."""
        t = c["t"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        tok = _choose(logits, rows, t)
        active = ~c["done"]
        out = dict(c)
        out["tok"] = tok
        out["tokens"] = c["tokens"].at[:, t].set(jnp.where(active, tok, 0))
        out["logprobs"] = c["logprobs"].at[:, t].set(logp[rows_idx, tok])
        if top_n:
            top_lp, top_id = jax.lax.top_k(logp, top_n)
            out["top_ids"] = c["top_ids"].at[:, t].set(top_id)
            out["top_logprobs"] = c["top_logprobs"].at[:, t].set(top_lp)
        # stopping
        stop_ids = jnp.arange(n_stop)[None, :]
        hit = tables["hit"][stop_ids, c["auto"], tok[:, None]] & rows["stop_on"]
        out["auto"] = tables["next_state"][stop_ids, c["auto"], tok[:, None]]
        is_eos = tables["eos"][tok] & ~rows["ignore_eos"]
        is_stop = tables["stop_token"][tok] | jnp.any(hit, axis=-1)
        at_limit = t + 1 >= rows["max_new"]
        ends = active & (is_eos | is_stop | at_limit)
        reason = jnp.where(is_eos, 2, jnp.where(is_stop, 1, 0))
        out["finish"] = jnp.where(ends, reason, c["finish"])
        out["stop_index"] = jnp.where(ends & jnp.any(hit, -1), jnp.argmax(hit, axis=-1), c["stop_index"])
        out["length"] = jnp.where(active, t + 1, c["length"])
        out["done"] = c["done"] | ends
        out["t"] = t + 1
        return out

    def cond(c):
        return (c["t"] < max_new) & ~jnp.all(c["done"])

    def body(c):
        # Feed the token chosen last (token t - 1, cache slot p + t - 1), then choose token t. The decode
        # is unconditional: the loop only runs while some row still needs a token, and a cache updated
        # inside a ``lax.cond`` branch would be copied whole on every step.
        slot = p + c["t"] - 1
        kv_valid_next = c["kv_valid"].at[:, slot].set(True)
        logits, cache = model.decode_step(c["tok"], c["positions"], c["cache"], kv_valid_next, slot)
        c = dict(c, cache=cache, kv_valid=kv_valid_next, positions=c["positions"] + 1)
        return pick(c, logits)

    carry = pick(carry, logits)  # token 0 comes from the prefill's logits
    final = jax.lax.while_loop(cond, body, carry)
    return {k: final[k] for k in ("tokens", "logprobs", "top_ids", "top_logprobs", "length", "finish",
                                  "stop_index")}


# --------------------------------------------------------------------------- host side
class Sampler:
    """Generate from many prompts at once with one compiled loop per shape bucket.

    ``model``'s weights are captured at construction (``nnx.split``); call :meth:`update` after training
    to use new weights without recompiling. ``eos_token_ids`` defaults to the config's EOS ids plus the
    tokenizer's.
    """

    def __init__(self, model: Decoder, tokenizer=None, *, eos_token_ids: Sequence[int] | None = None,
                 min_prompt_bucket: int = 16, min_new_bucket: int = 16, pad_id: int = 0):
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.tokenizer = tokenizer
        if eos_token_ids is None:
            eos = set(self.config.eos_token_ids)
            if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
                eos.add(int(tokenizer.eos_token_id))
            eos_token_ids = sorted(eos)
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.min_prompt_bucket, self.min_new_bucket, self.pad_id = min_prompt_bucket, min_new_bucket, pad_id
        self._texts: tuple[str, ...] | None = None
        self._jitted = jax.jit(self._core, static_argnames=("max_new", "top_n"))

    def update(self, model: Decoder) -> None:
        """Use ``model``'s current weights (same structure) from now on."""
        self.state = nnx.state(model)

    def _core(self, state, prompt, prompt_mask, rows, tables, *, max_new, top_n):
        model = nnx.merge(self.graphdef, state)
        return generate_arrays(model, prompt, prompt_mask, rows, tables, max_new=max_new, top_n=top_n)

    @property
    def num_compiles(self) -> int:
        """How many distinct shape buckets have been compiled so far."""
        return self._jitted._cache_size()

    def _token_texts(self) -> tuple[str, ...]:
        if self._texts is None:
            if self.tokenizer is None:
                raise ValueError("stop strings need a tokenizer (pass one to Sampler)")
            self._texts = token_texts(self.tokenizer, self.config.vocab_size)
        return self._texts

    def _encode(self, prompt) -> list[int]:
        """Token ids of one prompt. Text is encoded as ``tokenizer.encode(text)`` (special tokens such as
        BOS added, as :meth:`FlaxEngine.encode` and the toy models' training do), so a text prompt and its
        ``tokenizer.encode`` ids give the same tokens."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer (pass one to Sampler)")
            return [int(i) for i in self.tokenizer.encode(prompt)]
        ids = np.asarray(prompt)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"a prompt is text or a 1-D sequence of integer token ids, got an array of shape "
                             f"{ids.shape} and dtype {ids.dtype}")
        return [int(i) for i in ids]

    def generate(self, prompts: Sequence[Sequence[int] | str] | np.ndarray,
                 params: SamplingParams | Sequence[SamplingParams] = SamplingParams()) -> list[Completion]:
        """Generate for every prompt; ``params`` is shared or one per prompt.

        ``prompts``: a list of texts (encoded with ``tokenizer.encode``, BOS included) or of token-id
        sequences, or a 2-D integer array ``[n_prompts, length]`` (one prompt per row)."""
        if isinstance(prompts, str):
            raise ValueError("prompts is a list of prompts; wrap a single text prompt in a list")
        if len(prompts) == 0:
            return []
        ids = [self._encode(p) for p in prompts]
        if any(len(x) == 0 for x in ids):
            raise ValueError("empty prompt")
        plist = [params] * len(ids) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(ids):
            raise ValueError(f"{len(plist)} SamplingParams for {len(ids)} prompts")
        vocab = self.config.vocab_size
        for row in ids:
            bad = [i for i in row if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"prompt token id {bad[0]} outside the vocabulary [0, {vocab})")

        n = len(ids)
        b = bucket(n)
        p = bucket(max(len(x) for x in ids), self.min_prompt_bucket)
        max_new = bucket(max(sp.max_new_tokens for sp in plist), self.min_new_bucket)
        top_n = max(sp.logprobs for sp in plist)
        top_n = 0 if top_n == 0 else min(bucket(top_n, 4), MAX_TOP_LOGPROBS)  # few compiled variants

        prompt = np.full((b, p), self.pad_id, np.int32)
        mask = np.zeros((b, p), bool)
        for i, row in enumerate(ids):
            prompt[i, p - len(row):] = row
            mask[i, p - len(row):] = True

        stops = tuple(sorted({s for sp in plist for s in sp.stop}))
        n_state = bucket(max((len(s) for s in stops), default=1), 2)
        if stops:
            tab = stop_tables_for(self._token_texts(), stops, n_state)
            next_state, hit = tab.next_state, tab.hit
        else:
            next_state = np.zeros((1, n_state, vocab), np.int32)
            hit = np.zeros((1, n_state, vocab), bool)
        stop_on = np.zeros((b, next_state.shape[0]), bool)
        for i, sp in enumerate(plist):
            for s in sp.stop:
                stop_on[i, stops.index(s)] = True
        stop_token = np.zeros(vocab, bool)
        for sp in plist:
            stop_token[list(sp.stop_token_ids)] = True
        eos = np.zeros(vocab, bool)
        eos[[i for i in self.eos_token_ids if i < vocab]] = True

        def per_row(fn, dtype, fill):
            out = np.full((b,), fill, dtype)
            out[:n] = [fn(sp) for sp in plist]
            return out

        rows = dict(
            temperature=per_row(lambda s: s.temperature, np.float32, 0.0),
            top_p=per_row(lambda s: s.top_p, np.float32, 1.0),
            top_k=per_row(lambda s: s.top_k, np.int32, 0),
            seed=per_row(lambda s: s.seed, np.uint32, 0),
            max_new=per_row(lambda s: s.max_new_tokens, np.int32, 0),
            ignore_eos=per_row(lambda s: s.ignore_eos, bool, True),
            stop_on=stop_on,
        )
        tables = dict(next_state=next_state, hit=hit, stop_token=stop_token, eos=eos)
        out = self._jitted(self.state, prompt, mask, rows, tables, max_new=max_new, top_n=top_n)
        out = jax.device_get(out)
        return [self._completion(ids[i], plist[i], stops, {k: v[i] for k, v in out.items()}) for i in range(n)]

    def _completion(self, prompt_ids, sp: SamplingParams, stops, row) -> Completion:
        length = int(row["length"])
        tokens = [int(t) for t in row["tokens"][:length]]
        finish = FINISH_REASONS[int(row["finish"])]
        stop_str = stops[int(row["stop_index"])] if int(row["stop_index"]) >= 0 else None
        text = ""
        if self.tokenizer is not None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if stop_str is not None:  # the match ends inside the last token: cut at its first occurrence there
                at = text.find(stop_str, _first_end_start(self.tokenizer, tokens, text, stop_str))
                if at >= 0:
                    text = text[:at + len(stop_str)] if sp.include_stop_str_in_output else text[:at]
        k = sp.logprobs
        return Completion(
            prompt_ids=list(prompt_ids), token_ids=tokens, text=text, finish_reason=finish,
            logprobs=np.asarray(row["logprobs"][:length]),
            top_ids=np.asarray(row["top_ids"][:length, :k]),
            top_logprobs=np.asarray(row["top_logprobs"][:length, :k]),
            stop_str=stop_str,
        )


def _first_end_start(tokenizer, tokens: list[int], text: str, stop: str) -> int:
    """Where to look for the stop string that ended generation: it completed inside the last token, so its
    occurrence must end past the text of the earlier tokens. The first such occurrence is the one (a
    token such as ``"\\n\\n\\n\\n"`` holds ``"\\n\\n"`` twice); an earlier one in ``text`` can only be
    formed across a special token that the decoded text skips (the matcher reads the raw text)."""
    head = tokenizer.decode(tokens[:-1], skip_special_tokens=True)
    return max(0, len(head) - len(stop) + 1) if text.startswith(head) else 0


def generate(model: Decoder, tokenizer, prompts, params: SamplingParams | Sequence[SamplingParams] = SamplingParams()
             ) -> list[Completion]:
    """One-off convenience: ``Sampler(model, tokenizer).generate(prompts, params)`` (compiles every call)."""
    return Sampler(model, tokenizer).generate(prompts, params)
