"""The fused routed sampler: the whole stepwise routing loop of :mod:`roro_jax.rollout` as one jitted
program for two in-process Flax engines (DESIGN.md §3: "the whole routing loop ... can run as one jitted
program").

For a batch of B trajectories (rows; any mix of problems, samples and device policies) the program

1. prefills every prompt into the small and the large model's KV caches (left-padded to a bucket P);
2. for step t = 0 .. max_steps - 1, while a row is alive:
   - the small model decodes its step for the live rows (``lax.while_loop`` until every row hit the step
     delimiter, EOS or ``max_step_tokens``) into the caches' step region ``[P + t N, P + (t + 1) N)``;
   - the ``logprob`` features and the policy's decision are computed on the device
     (:mod:`roro_jax.router.device_policies`);
   - the large model decodes the step for the escalated rows (zero iterations when none escalated);
   - the end rules of the host loop are applied (EOS, empty steps, a final answer, a cut step, the
     context limit, the step limit);
   - **cross-prefill**: the kept step's tokens are fed into *both* caches as one chunk (``Decoder._run``
     over the step region, attending to the cached context), which leaves each cache equal to a forward
     over the whole context, and gives each model its next-token logits. Neither model ever re-reads a
     prefix.

There is no host round trip per step. Shapes are static: B (``batch``), P (prompt bucket), the step
limit T and the token limit N; cache length P + T N. A row's region slots that its step did not fill are
masked (positions come from the row's own token count, as in the sampler's left padding). Rows that
finished, and rows the large model does not write, cost no work: each decode and each cross-prefill
gathers the rows that need it into the smallest of a few row buckets (``row_buckets``, a
``lax.switch``), and scatters back only their tokens and their cache's step region.

**The same trajectories as the host loop.** Every random draw is the host loop's: a step's tokens use
the sampler's per-row keys (``derive_seed(seed, query, sample, step, role)``, token ``j`` folded in), the
policies' uniforms are the host policies' ``row_uniforms``, thresholds compare exactly in float64
(:func:`~roro_jax.router.device_policies.lt64`). The host then decodes the tokens to text and re-runs the
host loop's control flow on the texts (empty step, final answer, EOS, ...) and the prompt tokenisation
(``encode(prompt + kept steps)`` must equal the device's token context); a row whose device decisions
disagree with that (a tokenizer whose text does not round-trip, an answer format the on-device detector
does not know) is routed again through the host loop, so the result is always the host loop's
(``stats["fallback_rows"]`` counts them). Floating point differs from the host loop only in summation
order (chunked vs whole-prefix attention), so greedy decoding gives token-identical trajectories, and
sampling gives identical ones except where a draw falls within float noise of a tie.

Use :func:`fused_route_many` (several policies, rows of all of them batched together) or
:func:`fused_rollout` (one policy, the signature of :func:`roro_jax.rollout.rollout` minus the store's
async resume). Policies without a device version run through the host loop. Call it from synchronous
code (the host-loop fallback starts its own event loop).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from roro_jax.buckets import bucket
from roro_jax.models.sampler import FINISH_REASONS, _choose
from roro_jax.models.stopping import stop_tables_for
from roro_jax.rollout import RolloutConfig, default_prompt, derive_seed, has_final_answer, rollout_sync
from roro_jax.router.device_policies import DevicePolicy, row_uniforms_for, to_device_policy
from roro_jax.router.features import logprob_features
from roro_jax.tasks.grading import grade
from roro_jax.types import ESCALATE, LARGE, SMALL, Step, Trajectory

END_CODES = ("running", "answer", "eos", "max_steps", "empty_steps", "long_step", "context")
_LENGTH, _STOP, _EOS = (FINISH_REASONS.index(r) for r in ("length", "stop", "eos"))
_END = {name: i for i, name in enumerate(END_CODES)}
_WS = " \t\n\r\x0b\x0c"


# --------------------------------------------------------------------------------------------- text tables
def answer_dfa(token_texts: Sequence[str], max_states: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """A token-level automaton that predicts :func:`~roro_jax.rollout.has_final_answer` of a step's text:
    ``next_state [Q, V]`` int32 and ``accept [Q]`` bool, start state 0.

    It recognises ``answer:``/``the answer is:`` (any case) followed by content, and ``####`` followed by
    content on its line (the rules of :func:`~roro_jax.tasks.grading.extract_answer` but ``\\boxed``). It
    is a prediction: the host checks every decision against ``has_final_answer`` on the decoded text.
    """
    word = "answer"

    def restart(ch):
        return 1 if ch == "a" else 0

    def char(state, ch):
        a, a_marked, a_content, h, h_marked, h_line, h_found = state
        c = ch.lower()
        ws = ch in _WS
        content = not ws and ch not in "*$."
        mark = False
        if a < 6:
            a = a + 1 if c == word[a] else restart(c)
        elif a == 6:
            a, mark = (7, False) if ws else ((0, True) if c == ":" else (restart(c), False))
        elif a == 7:
            a, mark = (7, False) if ws else ((0, True) if c == ":" else ((8, False) if c == "i" else (restart(c), False)))
        elif a == 8:
            a = 9 if c == "s" else restart(c)
        elif a == 9:
            a, mark = (9, False) if ws else ((0, True) if c == ":" else (restart(c), False))
        if mark:
            a_marked, a_content = True, False
        elif a_marked and content:
            a_content = True
        hmark = False
        if ch == "#":
            h = min(h + 1, 4)
            hmark = h == 4
        else:
            h = 0
        if hmark:
            h_marked, h_line, h_found = True, True, False
        elif ch == "\n":
            h_line = False
        elif h_line and content:
            h_found = True
        return a, a_marked, a_content, h, h_marked, h_line, h_found

    def run(state, text):
        for ch in text:
            state = char(state, ch)
        return state

    start = (0, False, False, 0, False, False, False)
    index, states, rows = {start: 0}, [start], []
    i = 0
    while i < len(states):
        row = []
        for text in token_texts:
            nxt = run(states[i], text)
            if nxt not in index:
                if len(states) >= max_states:
                    raise ValueError("answer_dfa: too many states for this vocabulary")
                index[nxt] = len(states)
                states.append(nxt)
            row.append(index[nxt])
        rows.append(row)
        i += 1
    accept = np.array([(s[1] and s[2]) or (s[4] and s[6]) for s in states], bool)
    return np.asarray(rows, np.int32), accept


@functools.lru_cache(maxsize=8)
def _text_tables(token_texts: tuple[str, ...], skip_texts: tuple[str, ...], delimiter: str):
    stops = stop_tables_for(token_texts, (delimiter,), bucket(len(delimiter), 2))
    nxt, acc = answer_dfa(skip_texts)
    nonblank = np.array([bool(t.strip()) for t in skip_texts], bool)
    return {"stop_next": stops.next_state[0], "stop_hit": stops.hit[0], "ans_next": nxt, "ans_accept": acc,
            "nonblank": nonblank}


# --------------------------------------------------------------------------------------------- device pieces
def _decode(model, cache, kv_valid, logits0, pos0, active, rows, tables, base, n_tokens: int, k: int):
    """One step of ``n_tokens`` at most for the ``active`` rows, written into cache slots ``base + j``.

    ``rows``: temperature, top_p, top_k, seed [B]; ``tables``: stop_next/stop_hit [n_state, V], eos [V].
    Token j draws with the sampler's ``_choose`` (key ``fold_in(key(seed), j)``). Returns the cache and
    tokens/logprobs [B, N], top log-probs [B, N, k], length, finish [B] (index into FINISH_REASONS),
    stop [B] (the delimiter ended the step)."""
    b = logits0.shape[0]
    idx = jnp.arange(b)

    def pick(c, logits, t):
        logp = jax.nn.log_softmax(logits, axis=-1)
        tok = _choose(logits, rows, t)
        live = ~c["done"]
        hit = tables["stop_hit"][c["auto"], tok]
        is_eos = tables["eos"][tok]
        ends = live & (is_eos | hit | (t + 1 >= n_tokens))
        out = dict(c, tok=tok, auto=tables["stop_next"][c["auto"], tok], t=t + 1)
        out["tokens"] = c["tokens"].at[:, t].set(jnp.where(live, tok, 0))
        out["logprobs"] = c["logprobs"].at[:, t].set(logp[idx, tok])
        out["top"] = c["top"].at[:, t].set(jax.lax.top_k(logp, k)[0])
        out["finish"] = jnp.where(ends, jnp.where(is_eos, _EOS, jnp.where(hit, _STOP, _LENGTH)), c["finish"])
        out["stop"] = jnp.where(ends, hit, c["stop"])
        out["length"] = jnp.where(live, t + 1, c["length"])
        out["done"] = c["done"] | ends
        return out

    c = dict(t=jnp.int32(0), tok=jnp.zeros((b,), jnp.int32), cache=cache, kv_valid=kv_valid,
             auto=jnp.zeros((b,), jnp.int32), done=~active, length=jnp.zeros((b,), jnp.int32),
             finish=jnp.zeros((b,), jnp.int32), stop=jnp.zeros((b,), bool),
             tokens=jnp.zeros((b, n_tokens), jnp.int32), logprobs=jnp.zeros((b, n_tokens), jnp.float32),
             top=jnp.zeros((b, n_tokens, k), jnp.float32))
    c = pick(c, logits0, jnp.int32(0))

    def body(c):
        slot = base + c["t"] - 1
        kv = c["kv_valid"].at[:, slot].set(True)
        logits, cache = model.decode_step(c["tok"], pos0 + c["t"] - 1, c["cache"], kv, slot)
        return pick(dict(c, cache=cache, kv_valid=kv), logits, c["t"])

    c = jax.lax.while_loop(lambda c: (c["t"] < n_tokens) & ~jnp.all(c["done"]), body, c)
    return c["cache"], {k_: c[k_] for k_ in ("tokens", "logprobs", "top", "length", "finish", "stop")}


def _compact(active, size: int):
    """Indices of the first ``size`` active rows (then inactive ones), and which of them are active."""
    order = jnp.argsort(~active, stable=True)[:size]
    return order, active[order]


def _bucket_index(active, sizes: tuple[int, ...]):
    """The smallest of ``sizes`` (ascending; the last is the batch) that holds every active row."""
    n = jnp.sum(active.astype(jnp.int32))
    return jnp.sum((jnp.asarray(sizes[:-1]) < n).astype(jnp.int32))


def decode_rows(model, cache, kv_valid, logits0, pos0, active, rows, tables, base, n_tokens: int, k: int,
                sizes: tuple[int, ...]) -> dict:
    """:func:`_decode` of the ``active`` rows only: they are gathered into the smallest row bucket of
    ``sizes`` that holds them (``lax.switch``), decoded on a copy of their caches (the step's keys and
    values are written again by the cross-prefill, so only tokens and finish state come back), and
    scattered into [B] outputs. Rows that ended, and rows the large model does not write, cost nothing."""
    b = active.shape[0]
    keys = ("tokens", "logprobs", "top", "length", "finish", "stop")

    def branch(size):
        def run(_):
            if size == b:
                _, r = _decode(model, cache, kv_valid, logits0, pos0, active, rows, tables, base, n_tokens, k)
                return {k_: r[k_] for k_ in keys}
            idx, valid = _compact(active, size)
            sub = jax.tree.map(lambda x: x[idx], cache)
            _, r = _decode(model, sub, kv_valid[idx], logits0[idx], pos0[idx], valid,
                           {k_: v[idx] for k_, v in rows.items()}, tables, base, n_tokens, k)
            dest = jnp.where(valid, idx, b)
            out = {"tokens": jnp.zeros((b, n_tokens), jnp.int32), "logprobs": jnp.zeros((b, n_tokens), jnp.float32),
                   "top": jnp.zeros((b, n_tokens, k), jnp.float32), "length": jnp.zeros((b,), jnp.int32),
                   "finish": jnp.zeros((b,), jnp.int32), "stop": jnp.zeros((b,), bool)}
            return {k_: out[k_].at[dest].set(r[k_], mode="drop") for k_ in keys}
        return run

    if len(sizes) == 1:
        return branch(sizes[0])(None)
    return jax.lax.switch(_bucket_index(active, sizes), [branch(z) for z in sizes], None)


def feed_rows(model, cache, kv_valid, logits, tokens, n, pos0, base, sizes: tuple[int, ...]):
    """:func:`feed_chunk` of the rows with ``n > 0`` only, gathered into the smallest row bucket of
    ``sizes`` that holds them; the step region of their caches and their logits are scattered back (rows
    with ``n == 0`` keep theirs). Returns (logits [B, V], cache, kv_valid)."""
    b, N = tokens.shape
    need = n > 0

    def region(x):
        return jax.lax.dynamic_slice_in_dim(x, base, N, axis=2)

    def branch(size):
        def run(_):
            if size == b:
                lg, new, _ = feed_chunk(model, cache, kv_valid, tokens, n, pos0, base)
                return jnp.where(need[:, None], lg, logits), jax.tree.map(region, new)
            idx, valid = _compact(need, size)
            sub = jax.tree.map(lambda x: x[idx], cache)
            lg, new, _ = feed_chunk(model, sub, kv_valid[idx], tokens[idx], jnp.where(valid, n[idx], 0), pos0[idx], base)
            dest = jnp.where(valid, idx, b)
            regions = jax.tree.map(lambda old, x: region(old).at[dest].set(region(x), mode="drop"), cache, new)
            return logits.at[dest].set(lg, mode="drop"), regions
        return run

    if len(sizes) == 1:
        logits, regions = branch(sizes[0])(None)
    else:
        logits, regions = jax.lax.switch(_bucket_index(need, sizes), [branch(z) for z in sizes], None)
    cache = jax.tree.map(lambda x, r: jax.lax.dynamic_update_slice_in_dim(x, r, base, axis=2), cache, regions)
    fed = jnp.arange(N)[None, :] < n[:, None]
    return logits, cache, jax.lax.dynamic_update_slice(kv_valid, fed, (0, base))


def feed_chunk(model, cache, kv_valid, tokens, n, pos0, base):
    """Cross-prefill: feed ``tokens[b, :n[b]]`` into cache slots ``[base, base + N)`` of every row at
    positions ``pos0[b] + j``, attending to the row's valid context (``kv_valid`` [B, S]) and causally
    within the chunk. Returns the logits after each row's last fed token [B, V] (rows with ``n == 0``:
    meaningless), the cache and the updated ``kv_valid``."""
    b, N = tokens.shape
    j = jnp.arange(N)
    fed = j[None, :] < n[:, None]
    positions = pos0[:, None] + j[None, :]
    within = fed[:, None, :] & (j[None, None, :] <= j[None, :, None])  # [B, query, key]
    mask = jnp.broadcast_to(kv_valid[:, None, :], (b, N, kv_valid.shape[1]))
    mask = jax.lax.dynamic_update_slice(mask, within, (0, 0, base))
    hidden, cache = model._run(tokens, positions, mask, cache, base, True)
    last = hidden[jnp.arange(b), jnp.clip(n - 1, 0, N - 1)]
    return model.project(last), cache, jax.lax.dynamic_update_slice(kv_valid, fed, (0, base))


def _answer_state(tables, tokens, n):
    def body(state, x):
        j, tok = x
        nxt = tables["ans_next"][state, tok]
        return jnp.where(j < n, nxt, state), None

    N = tokens.shape[1]
    state, _ = jax.lax.scan(body, jnp.zeros(tokens.shape[:1], jnp.int32), (jnp.arange(N), tokens.T))
    return tables["ans_accept"][state]


PHASES = ("small_decode", "features_policy", "large_decode", "end_rules_cross_prefill", "loop_bookkeeping")
_TICKS: list[tuple[int, float]] = []


def _tick(i, _dep):
    _TICKS.append((int(i), time.perf_counter()))
    return np.int32(0)


def _mark(st, i: int, dep) -> jax.Array:
    """Profile mode: a host timestamp once ``dep`` is computed, returned as a zero the next phase adds
    to one of its inputs (so it cannot start earlier). Otherwise a constant zero."""
    if not st.profile:
        return jnp.int32(0)
    from jax.experimental import io_callback

    dep = jnp.sum(jnp.asarray(dep).reshape(-1)[:1]).astype(jnp.float32)
    return io_callback(functools.partial(_tick, i), jax.ShapeDtypeStruct((), jnp.int32), dep, ordered=True)


@dataclass(frozen=True)
class _Static:
    """Everything that shapes the compiled program (hashable)."""

    small_def: Any
    large_def: Any
    policies: tuple  # ((kind, static), ...)
    max_steps: int
    step_tokens: int
    feat_len: int
    k: int
    scale_steps: int
    scale_tokens: int
    row_buckets: tuple = ()  # row counts the decodes and cross-prefills gather live rows into (last = B)
    profile: bool = False  # time the phases with ordered host callbacks (slower; see profile_phases)


def _program(st: _Static, small_state, large_state, policy_params, prompt, pmask, inp, tables):
    """The fused routing loop (see the module docstring); ``inp``: per-row arrays."""
    from roro_jax.router.device_policies import DEVICE_POLICY_KINDS

    small, large = nnx.merge(st.small_def, small_state), nnx.merge(st.large_def, large_state)
    B, P = prompt.shape
    T, N, k = st.max_steps, st.step_tokens, st.k
    S = P + T * N
    cs, cl = small.init_cache(B, S), large.init_cache(B, S)
    logits_s, cs = small.prefill(prompt, pmask, cs)
    logits_l, cl = large.prefill(prompt, pmask, cl)
    kv_valid = jnp.concatenate([pmask.astype(bool), jnp.zeros((B, T * N), bool)], axis=1)
    F = 16
    samp_s = dict(temperature=inp["temp_s"], top_p=inp["top_p"], top_k=inp["top_k"])
    samp_l = dict(temperature=inp["temp_l"], top_p=inp["top_p"], top_k=inp["top_k"])
    out0 = dict(
        recorded=jnp.zeros((B, T), bool), tok_s=jnp.zeros((B, T, N), jnp.int32), n_s=jnp.zeros((B, T), jnp.int32),
        fin_s=jnp.zeros((B, T), jnp.int32), stop_s=jnp.zeros((B, T), bool), tok_l=jnp.zeros((B, T, N), jnp.int32),
        n_l=jnp.zeros((B, T), jnp.int32), fin_l=jnp.zeros((B, T), jnp.int32), stop_l=jnp.zeros((B, T), bool),
        action=jnp.zeros((B, T), jnp.int32), logp=jnp.zeros((B, T), jnp.float32),
        features=jnp.zeros((B, T, F), jnp.float32), blank=jnp.zeros((B, T), bool),
        answer=jnp.zeros((B, T), bool))
    carry = dict(t=jnp.int32(0), cs=cs, cl=cl, logits_s=logits_s, logits_l=logits_l, kv_valid=kv_valid,
                 ctx=jnp.sum(pmask.astype(jnp.int32), axis=1), alive=inp["real"], end=jnp.zeros((B,), jnp.int32),
                 empty_run=jnp.zeros((B,), jnp.int32), large_so_far=jnp.zeros((B,), jnp.int32),
                 esc_so_far=jnp.zeros((B,), jnp.int32), conf_hist=jnp.zeros((B, T), jnp.float32), out=out0)

    def body(c):
        t = c["t"]
        base = P + t * N + _mark(st, 0, c["ctx"])
        alive, end = c["alive"], c["end"]
        over = alive & (inp["max_context"] > 0) & (c["ctx"] + N > inp["max_context"])
        end = jnp.where(over, _END["context"], end)
        alive = alive & ~over
        # --- the small model's proposal
        rows_s = dict(samp_s, seed=inp["seed_s"][:, t])
        cs = c["cs"]
        prop = decode_rows(small, cs, c["kv_valid"], c["logits_s"], c["ctx"], alive, rows_s, tables, base, N, k,
                           st.row_buckets)
        # --- features and the decision
        base = base + _mark(st, 1, prop["length"])
        L = st.feat_len
        j = jnp.arange(N)[None, :]
        tmask = j < prop["length"][:, None]
        chosen = jnp.where(tmask, prop["logprobs"], 0.0)
        top = jnp.where(tmask[..., None], prop["top"], -jnp.inf)
        if L > N:
            chosen = jnp.pad(chosen, ((0, 0), (0, L - N)))
            top = jnp.pad(top, ((0, 0), (0, L - N), (0, 0)), constant_values=-jnp.inf)
            tmask = jnp.pad(tmask, ((0, 0), (0, L - N)))
        feats = logprob_features(top, chosen, tmask.astype(jnp.float32), step_index=jnp.full((B,), t, jnp.float32),
                                 large_tokens_so_far=c["large_so_far"].astype(jnp.float32),
                                 escalations_so_far=c["esc_so_far"].astype(jnp.float32),
                                 max_steps=st.scale_steps, max_step_tokens=st.scale_tokens)
        obs = dict(features=feats, confidence=feats[:, 0], step_index=jnp.full((B,), t, jnp.int32),
                   conf_hist=c["conf_hist"], conf_history=c["conf_hist"], u_hi=inp["u_hi"][:, t],
                   u_lo=inp["u_lo"][:, t], row_param=inp["row_param"])
        action = jnp.zeros((B,), jnp.int32)
        logp = jnp.zeros((B,), jnp.float32)
        for i, (kind, static) in enumerate(st.policies):
            a_i, lp_i = DEVICE_POLICY_KINDS.get(kind)(static, policy_params[i], obs)
            mine = inp["policy"] == i
            action = jnp.where(mine, a_i, action)
            logp = jnp.where(mine, lp_i, logp)
        esc = alive & (action == ESCALATE)
        base = base + _mark(st, 2, action)
        # --- the large model writes the escalated steps
        rows_l = dict(samp_l, seed=inp["seed_l"][:, t])
        cl = c["cl"]
        res = decode_rows(large, cl, c["kv_valid"], c["logits_l"], c["ctx"], esc, rows_l, tables, base, N, k,
                          st.row_buckets)
        base = base + _mark(st, 3, res["length"])
        kept_tok = jnp.where(esc[:, None], res["tokens"], prop["tokens"])
        n = jnp.where(esc, res["length"], prop["length"])
        fin = jnp.where(esc, res["finish"], prop["finish"])
        # --- the host loop's end rules
        jn = jnp.arange(N)[None, :] < n[:, None]
        blank = ~jnp.any(jn & tables["nonblank"][kept_tok], axis=1)
        answer = _answer_state(tables, kept_tok, n)
        is_eos = alive & (fin == _EOS)
        is_empty = alive & ~is_eos & blank
        empty_run = jnp.where(is_empty, c["empty_run"] + 1, jnp.where(alive & ~is_eos, 0, c["empty_run"]))
        nonempty = alive & ~is_eos & ~blank
        e_answer = nonempty & answer & inp["stop_on_answer"]
        e_long = nonempty & ~e_answer & (fin == _LENGTH) & inp["long_step_end"]
        e_empty = is_empty & (empty_run >= inp["max_empty"])
        ended = is_eos | e_answer | e_long | e_empty
        e_max = alive & ~ended & (t + 1 >= T)
        new_end = jnp.where(is_eos, _END["eos"], jnp.where(e_empty, _END["empty_steps"], jnp.where(
            e_answer, _END["answer"], jnp.where(e_long, _END["long_step"], _END["max_steps"]))))
        end = jnp.where(ended | e_max, new_end, end)
        still = alive & ~ended & ~e_max
        # --- cross-prefill: the kept step into both caches
        n_feed = jnp.where(still & nonempty, n, 0)
        ls, cs, kv_next = feed_rows(small, cs, c["kv_valid"], c["logits_s"], kept_tok, n_feed, c["ctx"], base,
                                    st.row_buckets)
        ll, cl, _ = feed_rows(large, cl, c["kv_valid"], c["logits_l"], kept_tok, n_feed, c["ctx"], base,
                              st.row_buckets)
        fed = n_feed > 0
        t = t + _mark(st, 4, ls[:, 0] + ll[:, 0])
        o = c["out"]
        o = dict(o, recorded=o["recorded"].at[:, t].set(alive), tok_s=o["tok_s"].at[:, t].set(prop["tokens"]),
                 n_s=o["n_s"].at[:, t].set(prop["length"]), fin_s=o["fin_s"].at[:, t].set(prop["finish"]),
                 stop_s=o["stop_s"].at[:, t].set(prop["stop"]), tok_l=o["tok_l"].at[:, t].set(res["tokens"]),
                 n_l=o["n_l"].at[:, t].set(jnp.where(esc, res["length"], 0)),
                 fin_l=o["fin_l"].at[:, t].set(res["finish"]), stop_l=o["stop_l"].at[:, t].set(res["stop"]),
                 action=o["action"].at[:, t].set(jnp.where(alive, action, 0)), logp=o["logp"].at[:, t].set(logp),
                 features=o["features"].at[:, t].set(feats), blank=o["blank"].at[:, t].set(blank),
                 answer=o["answer"].at[:, t].set(answer))
        return dict(t=t + 1, cs=cs, cl=cl, kv_valid=kv_next, alive=still, end=end, empty_run=empty_run,
                    logits_s=ls, logits_l=ll, ctx=c["ctx"] + n_feed,
                    large_so_far=c["large_so_far"] + jnp.where(esc, res["length"], 0),
                    esc_so_far=c["esc_so_far"] + esc.astype(jnp.int32),
                    conf_hist=c["conf_hist"].at[:, t].set(feats[:, 0]), out=o)

    final = jax.lax.while_loop(lambda c: (c["t"] < T) & jnp.any(c["alive"]), body, carry)
    return dict(final["out"], end=final["end"], ctx=final["ctx"])


@functools.lru_cache(maxsize=32)
def _compiled(st: _Static):
    return jax.jit(functools.partial(_program, st))


# --------------------------------------------------------------------------------------------- host side
@dataclass
class _Row:
    policy: int
    problem: Any
    g: int
    prompt: str
    ids: list[int]


class FusedRouter:
    """Route with two Flax engines through the fused program (see the module docstring).

    Args:
      small, large: :class:`~roro_jax.engines.flax_engine.FlaxEngine` s with the same tokenizer.
      cfg: the rollout settings (as for the host loop).
      batch: most rows per compiled program (a static shape: a call with fewer rows uses the smallest
        power of two >= 8 that holds them; the last batch is padded with idle rows).
      min_prompt_bucket: smallest prompt bucket (prompts are left-padded to a power of two).
      verify: re-check every trajectory on the host and route disagreeing rows through the host loop.
      row_buckets: the decodes and cross-prefills gather the rows that need them into the smallest of
        these shares of the batch that holds them (``(1,)``: every row computes, masked).
      profile: time the program's phases (``stats["phases"]``, seconds per phase summed over programs)
        with ordered host callbacks; this serialises the program, so time a run without it.
    """

    def __init__(self, small, large, cfg: RolloutConfig = RolloutConfig(), *, batch: int = 64,
                 min_prompt_bucket: int = 8, verify: bool = True, profile: bool = False,
                 row_buckets: Sequence[float] = (0.125, 0.25, 0.5, 1.0)):
        if small.tokenizer_key != large.tokenizer_key:
            raise ValueError("fused routing needs the small and the large engine to share a tokenizer")
        if small.config.vocab_size != large.config.vocab_size:
            raise ValueError("fused routing needs equal vocabulary sizes")
        self.small, self.large, self.cfg = small, large, cfg
        self.batch, self.min_prompt_bucket, self.verify = int(batch), int(min_prompt_bucket), verify
        self.profile = bool(profile)
        self.row_buckets = tuple(sorted(float(x) for x in row_buckets))
        if not self.row_buckets or self.row_buckets[-1] != 1.0 or self.row_buckets[0] <= 0:
            raise ValueError(f"row_buckets={row_buckets} must be shares in (0, 1] ending with 1")
        tok, V = small.tokenizer, small.config.vocab_size
        raw = small.sampler._token_texts()
        n = min(len(tok), V)
        skip = tuple(tok.batch_decode([[i] for i in range(n)], skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False)) + ("",) * (V - n)
        self._skip_texts = skip
        tables = dict(_text_tables(raw, skip, cfg.step_delimiter))
        eos = np.zeros(V, bool)
        eos[[i for i in set(small.sampler.eos_token_ids) | set(large.sampler.eos_token_ids) if i < V]] = True
        if set(small.sampler.eos_token_ids) != set(large.sampler.eos_token_ids):
            raise ValueError("fused routing needs the engines to share their EOS ids")
        tables["eos"] = eos
        self.tables = {k_: jnp.asarray(v) for k_, v in tables.items()}
        self.stats = {"programs": 0, "rows": 0, "device_s": 0.0, "host_s": 0.0, "fallback_rows": 0}

    # ------------------------------------------------------------------ the run
    def route_many(self, problems: Sequence, policies: Sequence, *, group_size: int = 1, seed: int = 0,
                   grader: Callable[[str, str], bool] = grade, prompt_fn: Callable = default_prompt,
                   annotate: Callable | None = None) -> dict[str, list[Trajectory]]:
        """``{policy_id: trajectories}`` (problem-major, sample-minor), like the host loop's rollout of
        every policy (``grader``, ``prompt_fn``, ``annotate`` as in :func:`roro_jax.rollout.rollout`).
        Policies without a device version go through the host loop."""
        ids = [p.policy_id for p in policies]
        if len(set(ids)) != len(ids):
            raise ValueError(f"fused routing: duplicate policy ids {sorted({i for i in ids if ids.count(i) > 1})}")
        qids = [str(p.id) for p in problems]
        if len(set(qids)) != len(qids):
            raise ValueError("fused routing: problem ids must be unique")
        device = [(i, to_device_policy(p)) for i, p in enumerate(policies)]
        on_dev = [(i, d) for i, d in device if d is not None]
        out: dict[str, list] = {}
        for i, d in device:
            if d is None:
                out[policies[i].policy_id] = rollout_sync(problems, self.small, self.large, policies[i], self.cfg,
                                                          group_size=group_size, seed=seed, grader=grader,
                                                          prompt_fn=prompt_fn, annotate=annotate)
        if not on_dev:
            return {pid: out[pid] for pid in ids}
        dpols = [d for _, d in on_dev]
        prompts = {str(p.id): prompt_fn(p) for p in problems}
        enc = {q: self.small.encode(t) for q, t in prompts.items()}
        rows = [_Row(j, p, g, prompts[str(p.id)], enc[str(p.id)]) for j in range(len(dpols)) for p in problems
                for g in range(group_size)]
        results: list[Trajectory | None] = [None] * len(rows)
        P = bucket(max(len(r.ids) for r in rows), self.min_prompt_bucket)
        B = min(self.batch, bucket(len(rows), 8))  # a small call does not pay for a large batch
        for s in range(0, len(rows), B):
            chunk = rows[s:s + B]
            arrays = self._run(chunk, dpols, P, seed, B)
            t0 = time.perf_counter()
            for i, r in enumerate(chunk):
                results[s + i] = self._trajectory(r, dpols[r.policy], {k_: v[i] for k_, v in arrays.items()},
                                                  seed, grader, annotate)
            self.stats["host_s"] += time.perf_counter() - t0
        bad = [i for i, tr in enumerate(results) if tr is None]
        if bad:  # the host loop decides these rows (see the module docstring)
            self.stats["fallback_rows"] += len(bad)
            for j, (_, d) in enumerate(on_dev):
                mine = [i for i in bad if rows[i].policy == j]
                if not mine:
                    continue
                pol = policies[on_dev[j][0]]
                by_problem = {}
                for i in mine:
                    by_problem.setdefault(str(rows[i].problem.id), []).append(i)
                for q, idxs in by_problem.items():
                    redo = rollout_sync([rows[idxs[0]].problem], self.small, self.large, pol, self.cfg,
                                        group_size=group_size, seed=seed, grader=grader, prompt_fn=prompt_fn,
                                        annotate=annotate)
                    for i in idxs:
                        results[i] = redo[rows[i].g]
        per = len(problems) * group_size
        for j, (i, _) in enumerate(on_dev):
            out[policies[i].policy_id] = results[j * per:(j + 1) * per]
        return {pid: out[pid] for pid in ids}

    def _static(self, dpols: Sequence[DevicePolicy], B: int) -> _Static:
        cfg = self.cfg
        sizes = tuple(sorted({max(1, int(round(B * x))) for x in self.row_buckets}))
        return _Static(self.small.sampler.graphdef, self.large.sampler.graphdef,
                       tuple((d.kind, d.static) for d in dpols), cfg.max_steps, cfg.max_step_tokens,
                       bucket(cfg.max_step_tokens, 16), cfg.logprobs, cfg.feature_scale_steps or cfg.max_steps,
                       cfg.feature_scale_tokens or cfg.max_step_tokens, sizes, self.profile)

    def inputs(self, chunk: Sequence[_Row], dpols: Sequence[DevicePolicy], P: int, seed: int, B: int):
        """The program's per-row inputs for ``chunk`` (padded to ``B`` rows)."""
        cfg, T = self.cfg, self.cfg.max_steps
        prompt = np.zeros((B, P), np.int32)
        pmask = np.zeros((B, P), bool)
        seed_s = np.zeros((B, T), np.uint32)
        seed_l = np.zeros((B, T), np.uint32)
        pol_seeds = np.zeros((B, T), np.int64)
        u_hi = np.zeros((B, T), np.float32)
        u_lo = np.zeros((B, T), np.float32)
        policy = np.zeros((B,), np.int32)
        row_param = np.zeros((B,), np.float32)
        real = np.zeros((B,), bool)
        for i, r in enumerate(chunk):
            if len(r.ids) > P:
                raise ValueError(f"prompt of {len(r.ids)} tokens exceeds the bucket {P}")
            prompt[i, P - len(r.ids):] = r.ids
            pmask[i, P - len(r.ids):] = True
            qid = str(r.problem.id)
            seed_s[i] = [derive_seed(seed, qid, r.g, t, SMALL) & 0xFFFFFFFF for t in range(T)]
            seed_l[i] = [derive_seed(seed, qid, r.g, t, LARGE) & 0xFFFFFFFF for t in range(T)]
            pol_seeds[i] = [derive_seed(seed, qid, r.g, t, "policy") for t in range(T)]
            d = dpols[r.policy]
            u_hi[i], u_lo[i] = row_uniforms_for(d, pol_seeds[i])
            policy[i] = r.policy
            row_param[i] = d.row_param(qid, r.g) if d.row_param is not None else 0.0
            real[i] = True
        t_l = cfg.temperature if cfg.large_temperature is None else cfg.large_temperature
        inp = dict(seed_s=seed_s, seed_l=seed_l, u_hi=u_hi, u_lo=u_lo, policy=policy, row_param=row_param, real=real,
                   temp_s=np.full((B,), cfg.temperature, np.float32), temp_l=np.full((B,), t_l, np.float32),
                   top_p=np.full((B,), cfg.top_p, np.float32), top_k=np.full((B,), cfg.top_k, np.int32),
                   stop_on_answer=np.bool_(cfg.stop_on_answer), long_step_end=np.bool_(cfg.long_step == "end"),
                   max_empty=np.int32(cfg.max_empty_steps), max_context=np.int32(cfg.max_context_tokens or 0))
        return prompt, pmask, inp

    def _run(self, chunk, dpols, P, seed, B) -> dict[str, np.ndarray]:
        prompt, pmask, inp = self.inputs(chunk, dpols, P, seed, B)
        fn = _compiled(self._static(dpols, B))
        _TICKS.clear()
        t0 = time.perf_counter()
        out = fn(self.small.sampler.state, self.large.sampler.state, tuple(d.params for d in dpols), prompt, pmask,
                 inp, self.tables)
        out = jax.device_get(out)
        t1 = time.perf_counter()
        self.stats["device_s"] += t1 - t0
        if self.profile and _TICKS:
            ph = self.stats.setdefault("phases", dict.fromkeys(("prefill_setup", *PHASES, "exit_transfer"), 0.0))
            ph["prefill_setup"] += _TICKS[0][1] - t0
            ends = {1: "small_decode", 2: "features_policy", 3: "large_decode", 4: "end_rules_cross_prefill",
                    0: "loop_bookkeeping"}
            for (_, a), (i, b) in zip(_TICKS[:-1], _TICKS[1:]):
                ph[ends[i]] += b - a
            ph["exit_transfer"] += t1 - _TICKS[-1][1]
        self.stats["programs"] += 1
        self.stats["rows"] += len(chunk)
        return out

    # ------------------------------------------------------------------ records
    def _text(self, ids: Sequence[int], stop: bool) -> str:
        texts = self._skip_texts
        text = "".join(texts[i] for i in ids)
        if stop and ids:  # as the sampler: cut after the first delimiter that ends in the last token
            d = self.cfg.step_delimiter
            at = text.find(d, max(0, len(text) - len(texts[ids[-1]]) - len(d) + 1))
            if at >= 0:
                text = text[:at + len(d)]
        return text

    def _trajectory(self, r: _Row, d: DevicePolicy, a: dict, seed: int, grader, annotate=None) -> Trajectory | None:
        """The host loop's record of one row from the program's arrays, re-checking its control flow on
        the texts; None when a device decision disagrees (the row then goes through the host loop)."""
        cfg, qid = self.cfg, str(r.problem.id)
        context: list[str] = []
        ctx_ids = list(r.ids)
        steps: list[Step] = []
        empty_run, end = 0, "max_steps"
        n_rec = int(np.sum(a["recorded"]))
        for t in range(n_rec):
            if not a["recorded"][t]:
                return None
            if self.verify and self.small.encode(r.prompt + "".join(context)) != ctx_ids:
                return None
            ns = int(a["n_s"][t])
            s_ids = [int(x) for x in a["tok_s"][t, :ns]]
            s_text = self._text(s_ids, bool(a["stop_s"][t]))
            action = int(a["action"][t])
            if action == ESCALATE:
                nl = int(a["n_l"][t])
                ids = [int(x) for x in a["tok_l"][t, :nl]]
                text = self._text(ids, bool(a["stop_l"][t]))
                fin = FINISH_REASONS[int(a["fin_l"][t])]
            else:
                ids, text, fin = s_ids, s_text, FINISH_REASONS[int(a["fin_s"][t])]
            feats = a["features"][t]
            steps.append(Step(index=t, text=text, token_ids=ids, model=LARGE if action == ESCALATE else SMALL,
                              action=action, action_logp=float(a["logp"][t]), features=[float(x) for x in feats],
                              small_tokens=ns, large_tokens=len(ids) if action == ESCALATE else 0,
                              small_text=s_text if action == ESCALATE else None, confidence=float(feats[0]),
                              finish_reason=fin))
            if bool(a["blank"][t]) != (not text.strip()):
                return None
            if fin == "eos":
                if text.strip():
                    context.append(text)
                end = "eos"
                break
            if not text.strip():
                empty_run += 1
                if empty_run >= cfg.max_empty_steps:
                    end = "empty_steps"
                    break
                continue
            empty_run = 0
            context.append(text)
            ctx_ids += ids
            if cfg.stop_on_answer:
                has = has_final_answer(text)
                if has != bool(a["answer"][t]):
                    return None
                if has:
                    end = "answer"
                    break
            if fin == "length" and cfg.long_step == "end":
                end = "long_step"
                break
        else:
            if n_rec < cfg.max_steps:
                end = "context"
        if END_CODES[int(a["end"])] != end:
            return None
        answer_text = "".join(context)
        traj = Trajectory(query_id=qid, sample_idx=r.g, policy_id=d.policy_id, steps=steps, answer_text=answer_text,
                          correct=bool(grader(answer_text, r.problem.answer)), seed=int(seed))
        n_small, n_large = float(self.small.n_params), float(self.large.n_params)
        traj.meta.update({
            "end_reason": end, "gold": r.problem.answer,
            "small_engine": self.small.name, "large_engine": self.large.name, "small_params": n_small,
            "large_params": n_large, "flops": traj.flops(n_small, n_large),
            "n_empty_steps": sum(1 for s in steps if not s.text.strip()), "feature_family": "logprob",
        })
        if annotate is not None:
            traj.meta.update(annotate(r.problem, steps))
        return traj


def fused_route_many(problems, small, large, policies, cfg: RolloutConfig = RolloutConfig(), *, group_size: int = 1,
                     seed: int = 0, batch: int = 64, stats: dict | None = None, **kw) -> dict[str, list[Trajectory]]:
    """Route ``problems`` with every policy through the fused program; ``{policy_id: trajectories}``."""
    router = FusedRouter(small, large, cfg, batch=batch)
    t0 = time.perf_counter()
    out = router.route_many(problems, policies, group_size=group_size, seed=seed, **kw)
    if stats is not None:
        stats.update(router.stats, seconds=time.perf_counter() - t0)
    return out


def fused_rollout(problems, small, large, policy, cfg: RolloutConfig = RolloutConfig(), *, group_size: int = 1,
                  seed: int = 0, **kw) -> list[Trajectory]:
    """:func:`roro_jax.rollout.rollout` of one policy through the fused program."""
    return fused_route_many(problems, small, large, [policy], cfg, group_size=group_size, seed=seed,
                            **kw)[policy.policy_id]
