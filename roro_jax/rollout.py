"""The stepwise routing loop: the small model proposes each step, a policy keeps it or has the large model
rewrite it from the same prefix, until an answer, EOS or the step limit (DESIGN.md §1).

Design (how requests overlap)
-----------------------------
Every trajectory (one problem × one sample index) is its own coroutine; up to ``cfg.max_live`` run at
once. A trajectory asks its engines for *one* step at a time and never waits on another trajectory:

1. ``small.generate([request])`` for its next step. Engines merge concurrent requests themselves: the
   ``flax`` engine batches every request pending in the same event-loop tick into one compiled call (and
   keeps collecting while that call runs); a server engine sends them as concurrent HTTP requests.
2. The proposal's features (the ``logprob`` family, from its top-k log-probs and the routing context) and
   the policy's decision are made by a *decision batcher*: every trajectory whose proposal arrived in the
   same tick is featurised in one jitted call and decided in one ``policy.act`` call.
3. On *escalate*, ``large.generate([request])`` from the same prefix (re-encoded with the large engine's
   own tokenizer, so cross-family pairs work); meanwhile other trajectories' small requests proceed, so
   the small and the large engine work at the same time.

So the loop has no round barrier: a slow request (a long step, a large-model rewrite) delays only its
own trajectory, and the engines always see every request that can be made.

Reproducibility
---------------
All randomness is derived from ``(seed, query id, sample index, step index, role)`` by
:func:`derive_seed`: the small and large engines' sampling seeds and the policy's per-row seed
(``obs.row_seeds``). Decision batches form by timing, so a policy must not let one row's decision depend on
which other rows share its batch. Policies that declare ``batch_invariant = True`` (every baseline and
exploratory policy in :mod:`roro_jax.router`; their random draws come from ``obs.row_seeds``) are called
once per batch; any other policy is called one row at a time with a generator seeded by that row's seed.
Engines sample token ``t`` of a request from its seed alone (the ``flax`` engine folds ``t`` into the
request's key), so the same ``seed`` reproduces every trajectory exactly, and sample indices differ.

Prefixes are kept as text: each request's prompt ids are ``engine.encode(prompt + kept steps)``; the ids
are computed once per prefix per tokenizer (engines with the same ``tokenizer_key`` share them).

Ends and edge cases (``Trajectory.meta["end_reason"]``)
-------------------------------------------------------
``"answer"``: the kept step holds a final answer (``extract_answer`` finds one; ``cfg.stop_on_answer``).
``"eos"``: the kept step ended with EOS. ``"max_steps"``: ``cfg.max_steps`` steps were recorded.
``"empty_steps"``: ``cfg.max_empty_steps`` consecutive empty kept steps (only whitespace/the delimiter);
an empty step is recorded (its tokens count) but does not enter the context, so the next request is a
fresh attempt at the same position with a new seed. ``"long_step"``: a kept step hit
``cfg.max_step_tokens`` without a delimiter and ``cfg.long_step == "end"``; with ``"continue"`` (default)
the cut step enters the context and the next request continues it (the router decides per chunk).
``"context"``: the next request would exceed ``cfg.max_context_tokens``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from roro_jax.buckets import bucket, round_up
from roro_jax.engines.base import STEP_DELIMITER, SamplingParams, StepEngine, StepRequest, StepResult
from roro_jax.router.policies import Policy, StepObservation
from roro_jax.tasks.grading import extract_answer, grade
from roro_jax.tasks.problem import Problem
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL, Step, Trajectory

LONG_STEP_MODES = ("continue", "end")
END_REASONS = ("answer", "eos", "max_steps", "empty_steps", "long_step", "context")


@dataclass(frozen=True)
class RolloutConfig:
    """Settings of the routing loop (the lead embeds this in the top-level config as ``rollout``).

    Attributes:
      max_steps: most steps per trajectory (DESIGN.md: 30).
      max_step_tokens: most tokens per step (the engine's ``max_tokens``).
      temperature, top_p, top_k: sampling of both models (``large_temperature`` overrides for the LRM).
      logprobs: top-k log-probs per token requested from the small model (feature input; <= 20).
      step_delimiter: the stop string that ends a step.
      stop_on_answer: end when a kept step contains a final answer.
      long_step: ``"continue"`` or ``"end"`` when a kept step hits ``max_step_tokens``.
      max_empty_steps: consecutive empty kept steps that end the trajectory.
      max_context_tokens: end before a request whose prompt + ``max_step_tokens`` exceeds this (None: off).
      max_live: trajectories in flight at once.
      feature_scale_steps / feature_scale_tokens: the normalisers of the ``logprob`` family's context
        features (step index / S, step length / N); default ``max_steps`` / ``max_step_tokens``.
    """

    max_steps: int = 30
    max_step_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    large_temperature: float | None = None
    logprobs: int = 5
    step_delimiter: str = STEP_DELIMITER
    stop_on_answer: bool = True
    long_step: str = "continue"
    max_empty_steps: int = 2
    max_context_tokens: int | None = None
    max_live: int = 256
    feature_scale_steps: int | None = None
    feature_scale_tokens: int | None = None

    def __post_init__(self):
        if self.max_steps < 1 or self.max_step_tokens < 1:
            raise ValueError(f"RolloutConfig: max_steps={self.max_steps} and max_step_tokens="
                             f"{self.max_step_tokens} must be >= 1")
        if not 1 <= self.logprobs <= 20:
            raise ValueError(f"RolloutConfig.logprobs={self.logprobs} must be in [1, 20] (features need it)")
        if self.long_step not in LONG_STEP_MODES:
            raise ValueError(f"RolloutConfig.long_step={self.long_step!r} must be one of {LONG_STEP_MODES}")
        if self.max_empty_steps < 1 or self.max_live < 1:
            raise ValueError("RolloutConfig: max_empty_steps and max_live must be >= 1")
        if not self.step_delimiter:
            raise ValueError("RolloutConfig.step_delimiter must be non-empty")
        if self.temperature < 0 or (self.large_temperature is not None and self.large_temperature < 0):
            raise ValueError("RolloutConfig: temperatures must be >= 0")

    def small_params(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_step_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, stop=(self.step_delimiter,), logprobs=self.logprobs)

    def large_params(self) -> SamplingParams:
        t = self.temperature if self.large_temperature is None else self.large_temperature
        return SamplingParams(max_tokens=self.max_step_tokens, temperature=t, top_p=self.top_p,
                              top_k=self.top_k, stop=(self.step_delimiter,), logprobs=self.logprobs)


# ------------------------------------------------------------------------------------------ seeds
def derive_seed(seed: int, query_id: str, sample_idx: int, step: int, role: str) -> int:
    """A 31-bit seed that is a pure function of its arguments (``role``: "small" | "large" | "policy")."""
    h = hashlib.blake2b(f"{int(seed)}|{query_id}|{int(sample_idx)}|{int(step)}|{role}".encode(),
                        digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def default_prompt(problem: Problem) -> str:
    """The question and a blank line (the toy world's :func:`roro_jax.tasks.toy.prompt_text` is the same).
    Chat models need their template: pass ``prompt_fn``."""
    return problem.question + STEP_DELIMITER


def has_final_answer(text: str) -> bool:
    return extract_answer(text) is not None


# ------------------------------------------------------------------------------------------ features
@functools.lru_cache(maxsize=16)
def _jitted_logprob_features(max_steps: int, max_step_tokens: int):
    import jax

    from roro_jax.router.features import logprob_features

    return jax.jit(functools.partial(logprob_features, max_steps=max_steps, max_step_tokens=max_step_tokens))


@dataclass
class _Row:
    result: StepResult
    step_index: int
    large_so_far: int
    esc_so_far: int
    conf_history: np.ndarray
    query_id: str
    sample_idx: int
    row_seed: int
    future: asyncio.Future = None


class _Decider:
    """Featurises and decides every proposal that arrived in the same event-loop tick, in one batch."""

    def __init__(self, policy: Policy, cfg: RolloutConfig):
        self.policy, self.cfg = policy, cfg
        self.k = cfg.logprobs
        self.L = bucket(cfg.max_step_tokens, 16)
        self.fn = _jitted_logprob_features(cfg.feature_scale_steps or cfg.max_steps,
                                           cfg.feature_scale_tokens or cfg.max_step_tokens)
        self.batch_invariant = bool(getattr(policy, "batch_invariant", False))
        self._rows: list[_Row] = []
        self._flush: asyncio.Task | None = None
        self.stats = {"batches": 0, "rows": 0, "policy_calls": 0, "seconds": 0.0}

    async def decide(self, row: _Row) -> tuple[int, float, np.ndarray, float]:
        loop = asyncio.get_running_loop()
        row.future = loop.create_future()
        self._rows.append(row)
        if self._flush is None or self._flush.done():
            self._flush = loop.create_task(self._run())
        return await row.future

    ROW_BLOCK = 64  # rows per feature call: one compiled shape, results independent of the batch's size

    def featurize(self, rows: Sequence[_Row]) -> np.ndarray:
        n, L, k, B = len(rows), self.L, self.k, self.ROW_BLOCK
        nb = round_up(n, B)
        top = np.full((nb, L, k), -np.inf, np.float32)
        chosen = np.zeros((nb, L), np.float32)
        mask = np.zeros((nb, L), np.float32)
        ctx = np.zeros((3, nb), np.float32)
        for i, r in enumerate(rows):
            lp = np.asarray(r.result.logprobs, np.float32)[:L]
            tl = np.asarray(r.result.top_logprobs, np.float32).reshape(len(lp), -1)[:L, :k]
            m = len(lp)
            chosen[i, :m] = lp
            top[i, :m, :tl.shape[1]] = tl
            mask[i, :m] = 1.0
            ctx[:, i] = (r.step_index, r.large_so_far, r.esc_so_far)
        f = [np.asarray(self.fn(top[j:j + B], chosen[j:j + B], mask[j:j + B], step_index=ctx[0, j:j + B],
                                large_tokens_so_far=ctx[1, j:j + B], escalations_so_far=ctx[2, j:j + B]),
                        np.float32) for j in range(0, nb, B)]
        return np.concatenate(f)[:n]

    async def _run(self) -> None:
        await asyncio.sleep(0)  # gather every proposal that is ready in this tick
        rows, self._rows = self._rows, []
        if not rows:
            return
        t0 = time.perf_counter()
        try:
            feats = self.featurize(rows)
            conf = feats[:, 0].astype(np.float64)  # mean chosen-token probability
            obs = StepObservation(
                features=feats, confidence=conf,
                step_index=np.array([r.step_index for r in rows], np.int32),
                conf_history=[r.conf_history for r in rows],
                query_ids=[r.query_id for r in rows],
                sample_idx=np.array([r.sample_idx for r in rows], np.int64))
            obs.row_seeds = np.array([r.row_seed for r in rows], np.int64)
            actions, logp = self._act(obs)
        except Exception as e:  # noqa: BLE001 - every waiting trajectory gets the error
            for r in rows:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["seconds"] += time.perf_counter() - t0
        for i, r in enumerate(rows):
            if not r.future.done():
                r.future.set_result((int(actions[i]), float(logp[i]), feats[i], float(conf[i])))

    def _act(self, obs: StepObservation) -> tuple[np.ndarray, np.ndarray]:
        n = len(obs)
        if self.batch_invariant:
            self.stats["policy_calls"] += 1
            a, lp = self.policy.act(obs, np.random.default_rng([int(s) for s in obs.row_seeds]))
        else:
            a, lp = np.zeros(n, np.int64), np.zeros(n, np.float64)
            for i in range(n):
                one = StepObservation(obs.features[i:i + 1], obs.confidence[i:i + 1], obs.step_index[i:i + 1],
                                      obs.conf_history[i:i + 1], obs.query_ids[i:i + 1], obs.sample_idx[i:i + 1])
                one.row_seeds = obs.row_seeds[i:i + 1]
                self.stats["policy_calls"] += 1
                ai, li = self.policy.act(one, np.random.default_rng(int(obs.row_seeds[i])))
                a[i], lp[i] = np.asarray(ai).reshape(-1)[0], np.asarray(li).reshape(-1)[0]
        a, lp = np.asarray(a), np.asarray(lp, np.float64)
        pid = getattr(self.policy, "policy_id", type(self.policy).__name__)
        if a.shape != (n,) or lp.shape != (n,):
            raise ValueError(f"policy {pid!r} returned actions {a.shape} / logp {lp.shape} for {n} rows")
        if not np.all((a == KEEP) | (a == ESCALATE)):
            raise ValueError(f"policy {pid!r} returned actions other than KEEP/ESCALATE: {np.unique(a)}")
        if not np.all(np.isfinite(lp)):
            raise ValueError(f"policy {pid!r} returned non-finite action log-probs")
        return a.astype(np.int32), lp


# ------------------------------------------------------------------------------------------ the loop
def _tok_key(engine) -> Any:
    return getattr(engine, "tokenizer_key", None) or ("engine", id(engine))


class _Encoder:
    """Per-trajectory prompt ids of the current prefix, computed once per tokenizer."""

    def __init__(self):
        self.text: str | None = None
        self.ids: dict[Any, list[int]] = {}

    def ids_for(self, engine, text: str) -> list[int]:
        if text != self.text:
            self.text, self.ids = text, {}
        key = _tok_key(engine)
        if key not in self.ids:
            self.ids[key] = list(engine.encode(text))
        return self.ids[key]


async def _one(problem: Problem, g: int, small: StepEngine, large: StepEngine, policy: Policy,
               cfg: RolloutConfig, seed: int, decider: _Decider, grader, prompt_fn, annotate) -> Trajectory:
    qid = str(problem.id)
    prompt = prompt_fn(problem)
    sp, lp_params = cfg.small_params(), cfg.large_params()
    context: list[str] = []
    steps: list[Step] = []
    confs: list[float] = []
    large_so_far = esc_so_far = empty_run = 0
    enc = _Encoder()
    end = "max_steps"
    for t in range(cfg.max_steps):
        prefix = prompt + "".join(context)
        s_ids = enc.ids_for(small, prefix)
        if cfg.max_context_tokens is not None and len(s_ids) + cfg.max_step_tokens > cfg.max_context_tokens:
            end = "context"
            break
        rid = f"{qid}/{policy.policy_id}/{g}/{t}"
        (prop,) = await small.generate(
            [StepRequest(s_ids, seed=derive_seed(seed, qid, g, t, SMALL), request_id=rid + "/s")], sp)
        action, a_logp, feats, conf = await decider.decide(_Row(
            prop, t, large_so_far, esc_so_far, np.asarray(confs, np.float64), qid, g,
            derive_seed(seed, qid, g, t, "policy")))
        if action == ESCALATE:
            l_ids = enc.ids_for(large, prefix)
            if cfg.max_context_tokens is not None and len(l_ids) + cfg.max_step_tokens > cfg.max_context_tokens:
                end = "context"
                break
            (res,) = await large.generate(
                [StepRequest(l_ids, seed=derive_seed(seed, qid, g, t, LARGE), request_id=rid + "/l")], lp_params)
            large_so_far += res.n_tokens
            esc_so_far += 1
        else:
            res = prop
        confs.append(conf)
        steps.append(Step(
            index=t, text=res.text, token_ids=list(res.token_ids), model=LARGE if action == ESCALATE else SMALL,
            action=action, action_logp=a_logp, features=[float(x) for x in feats],
            small_tokens=prop.n_tokens, large_tokens=res.n_tokens if action == ESCALATE else 0,
            small_text=prop.text if action == ESCALATE else None, confidence=conf,
            finish_reason=res.finish_reason))
        if res.finish_reason == "eos":
            if res.text.strip():
                context.append(res.text)
            end = "eos"
            break
        if not res.text.strip():
            empty_run += 1
            if empty_run >= cfg.max_empty_steps:
                end = "empty_steps"
                break
            continue
        empty_run = 0
        context.append(res.text)
        if cfg.stop_on_answer and has_final_answer(res.text):
            end = "answer"
            break
        if res.finish_reason == "length" and cfg.long_step == "end":
            end = "long_step"
            break
    answer_text = "".join(context)
    traj = Trajectory(query_id=qid, sample_idx=g, policy_id=policy.policy_id, steps=steps,
                      answer_text=answer_text, correct=bool(grader(answer_text, problem.answer)), seed=int(seed))
    n_small, n_large = float(getattr(small, "n_params", 0.0)), float(getattr(large, "n_params", 0.0))
    traj.meta.update({
        "end_reason": end, "gold": problem.answer,
        "small_engine": getattr(small, "name", type(small).__name__),
        "large_engine": getattr(large, "name", type(large).__name__),
        "small_params": n_small, "large_params": n_large, "flops": traj.flops(n_small, n_large),
        "n_empty_steps": sum(1 for s in steps if not s.text.strip()), "feature_family": "logprob",
    })
    if annotate is not None:
        traj.meta.update(annotate(problem, steps))
    return traj


def _store_has(store, key: tuple[str, int, str]) -> bool:
    return key in store


async def rollout(problems: Sequence[Problem], small: StepEngine, large: StepEngine, policy: Policy,
                  cfg: RolloutConfig = RolloutConfig(), *, group_size: int = 1, seed: int = 0, store=None,
                  grader: Callable[[str, str], bool] = grade,
                  prompt_fn: Callable[[Problem], str] = default_prompt,
                  annotate: Callable[[Problem, Sequence[Step]], dict] | None = None,
                  stats: dict | None = None) -> list[Trajectory]:
    """Route ``group_size`` samples of every problem with ``policy``; see the module docstring.

    Args:
      problems: the queries (their ``id`` must be unique).
      small, large: the SRM and LRM engines (may be the same object).
      policy: decides keep/escalate for each proposed step (``policy.policy_id`` names the trajectories).
      cfg: the loop's settings.
      group_size: G samples per query, sample indices ``0..G-1``, seeds derived per sample and step.
      seed: base seed; the same seed reproduces every trajectory.
      store: optional trajectory store (``(query_id, sample_idx, policy_id) in store``, ``store.add``):
        trajectories already stored are skipped, every finished one is appended at once.
      grader: ``grader(answer_text, gold) -> bool``.
      prompt_fn: ``problem -> prompt text`` (the prefix the first step is generated from).
      annotate: optional ``(problem, steps) -> dict`` added to each trajectory's ``meta`` (a world's own
        labels, e.g. the toy world's :func:`roro_jax.tasks.toy.trajectory_meta`: ``world`` and step labels).
      stats: optional dict filled with timing/batching figures.
    Returns:
      the trajectories generated by this call (stored ones skipped), problem-major, sample-minor.
    """
    if group_size < 1:
        raise ValueError(f"rollout: group_size={group_size} must be >= 1")
    ids = [str(p.id) for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"rollout: problem id {dup!r} appears more than once")
    if not getattr(policy, "policy_id", None):
        raise ValueError("rollout: the policy has no policy_id")
    decider = _Decider(policy, cfg)
    todo = [(p, g) for p in problems for g in range(group_size)
            if store is None or not _store_has(store, (str(p.id), g, policy.policy_id))]
    sem = asyncio.Semaphore(cfg.max_live)
    t0 = time.perf_counter()

    async def run(p, g):
        async with sem:
            traj = await _one(p, g, small, large, policy, cfg, seed, decider, grader, prompt_fn, annotate)
        if store is not None:
            store.add(traj)
        return traj

    tasks = [asyncio.ensure_future(run(p, g)) for p, g in todo]
    try:
        out = list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if stats is not None:
        stats.update({"seconds": time.perf_counter() - t0, "trajectories": len(out),
                      "skipped": len(problems) * group_size - len(todo), "decider": dict(decider.stats),
                      "small_tokens": sum(t.small_tokens for t in out),
                      "large_tokens": sum(t.large_tokens for t in out)})
    return out


def rollout_sync(*args, **kwargs) -> list[Trajectory]:
    """:func:`rollout` from synchronous code (starts and closes its own event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(rollout(*args, **kwargs))
    raise RuntimeError("rollout_sync() called from a running event loop; use `await rollout(...)`")


def warm_features(cfg: RolloutConfig) -> None:
    """Compile the decision batcher's feature function (one shape: blocks of ``_Decider.ROW_BLOCK`` rows,
    whatever the batch size), so no compile lands inside a timed run."""
    dec = _Decider(_NoPolicy(), cfg)
    row = _Row(StepResult([0], "", "stop", np.zeros(1, np.float32), np.zeros((1, cfg.logprobs), np.float32)),
               0, 0, 0, np.zeros(0), "q", 0, 0)
    dec.featurize([row])


class _NoPolicy:
    policy_id = "none"
    batch_invariant = True

    def act(self, obs, rng):  # pragma: no cover - never called
        raise RuntimeError("not a policy")
