"""The Rubricor: an LM that writes a query's rubric; SFT warm start, then GRPO on rubric tokens.

**Prompt** (``prompt``, a name in :data:`PROMPTS`):

* ``problem``: ``[BOS] query "\\n\\nR:\\n"``: the Rubricor reads the problem itself, as a pretrained LM
  (e.g. the toy world's large model, ``model.path: toy:large``) that can work it out, and writes
  checkpoints a correct route passes (teacher ``checkpoints``: the reference step after each operation);
* ``solve``: ``[BOS] query "\\n\\n"``: the problem exactly as the toy world's models are prompted to solve it
  (:func:`roro_jax.tasks.toy.prompt_text`), so a Rubricor that is the task's solver (``toy:large``) writing in
  the ``steps`` format (``output: steps``) does the arithmetic it was trained on;
* ``profile``: ``[BOS] "Q:" query "\\nP:" summary "\\nR:\\n"`` where ``summary`` is
  :func:`~roro_jax.rubric.serialize.query_summary` of the query's trajectories: the small model's
  per-step confidence profile (no outcomes), for rubrics about where the small model hesitates.

The completion is the rubric text in the format ``output`` (a name in
:data:`~roro_jax.rubric.format.RUBRIC_FORMATS`: ``numbered``, the weighted numbered list of
:mod:`roro_jax.rubric.format`, or ``steps``, one criterion per blank-line-separated step), ended by EOS.

**SFT.** Token-mean negative log-likelihood of the teacher rubric's tokens (and EOS) given the prompt.

**GRPO.** For each query, sample G rubrics (temperature ``temperature``); reward each with
:func:`rubric_reward` (the frozen Judge's pairwise accuracy — or mean margin — on that query's training
pairs when reading that rubric; malformed rubrics get ``malformed_reward``, the lowest possible, and
rubrics over ``target_chars`` lose ``length_penalty`` per extra character); advantages by
:func:`~roro_jax.rl.advantages.group_advantages`; loss
the registered ``grpo`` policy loss (:func:`~roro_jax.rl.losses.policy_loss_terms`) on the completion tokens'
log-probs (``old_logp`` = the sampling policy's log-probs at the sampling temperature, recomputed in one pass
before the update).

Both steps are the generic update of :mod:`roro_jax.rl.update` (:func:`sft_loss_terms`,
:func:`rubricor_loss_terms`), so they run in every parallel mode (``parallel``: ``single``, ``shard_map``,
``pmap``, ``jit_sharded``; a batch's rows then split over the devices). The clip range rides in the train
state (``hparams``), the learning rates in the optimiser states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from roro_jax.buckets import round_up
from roro_jax.models.sampler import Sampler, SamplingParams
from roro_jax.models.score import token_logprobs
from roro_jax.rl.advantages import group_advantages
from roro_jax.rl.losses import POLICY_LOSSES, finalize_terms, safe_div
from roro_jax.rl.update import MODES, TrainState, init_state, make_optimizer, make_update
from roro_jax.rubric.format import RUBRIC_FORMATS, ParseResult, RubricLimits, get_format
from roro_jax.rubric.judge import copy_tree
from roro_jax.rubric.lm import LMSpec, bos, build_lm, encode, trainable_filter
from roro_jax.rubric.serialize import SerializeConfig, serialize_query


def _profile_prompt(query: str, summary: str, ser: SerializeConfig) -> str:
    return "Q:" + serialize_query(query, ser) + "\nP:" + summary + "\nR:\n"


def _problem_prompt(query: str, summary: str, ser: SerializeConfig) -> str:
    return serialize_query(query, ser) + "\n\nR:\n"


def _solve_prompt(query: str, summary: str, ser: SerializeConfig) -> str:
    return serialize_query(query, ser) + "\n\n"


# rubricor.prompt -> (query text, confidence-profile summary, serialisation config) -> prompt text (BOS first)
PROMPTS: dict[str, Callable[[str, str, SerializeConfig], str]] = {"profile": _profile_prompt,
                                                                   "problem": _problem_prompt,
                                                                   "solve": _solve_prompt}


@dataclass
class RubricorConfig:
    model: LMSpec = field(default_factory=LMSpec)
    prompt: str = field(default="profile", metadata={"registry": lambda: sorted(PROMPTS)})  # profile | problem | solve
    # the rubric text format it writes (SFT targets, parser): numbered | steps (roro_jax.rubric.format)
    output: str = field(default="numbered", metadata={"registry": lambda: sorted(RUBRIC_FORMATS)})
    sft_steps: int = 200
    sft_lr: float = 3e-3
    sft_batch: int = 16
    grpo_steps: int = 6  # GRPO updates per Rubricor phase
    grpo_queries: int = 8  # queries per GRPO update
    group_size: int = 4
    grpo_epochs: int = 2  # optimiser steps on each sampled batch
    lr: float = 3e-4
    max_grad_norm: float = 1.0
    clip_eps: float = 0.2
    temperature: float = 1.0
    max_new_tokens: int = 160
    reward: str = "accuracy"  # accuracy | margin
    reward_pairs: int = 6  # training pairs of the query used per reward (subsampled)
    malformed_reward: float = -1.5
    target_chars: int = 160
    length_penalty: float = 0.0
    # single | shard_map | pmap | jit_sharded (batches: a multiple of the devices)
    parallel: str = field(default="single", metadata={"choices": MODES})


# ------------------------------------------------------------------------------------------ rewards

def _acc(sp, sr):
    sp, sr = np.asarray(sp, float), np.asarray(sr, float)
    return float(np.mean((sp > sr) + 0.5 * (sp == sr))) if sp.size else float("nan")


def _margin(sp, sr):
    sp, sr = np.asarray(sp, float), np.asarray(sr, float)
    return float(np.mean(sp - sr)) if sp.size else float("nan")


REWARDS: dict[str, Callable] = {"accuracy": _acc, "margin": _margin}
REWARD_FLOOR: dict[str, float] = {"accuracy": 0.0, "margin": -1.0}  # least attainable value of each kind


def rubric_reward(parsed: ParseResult, score_pref: Sequence[float] | None, score_rej: Sequence[float] | None, *,
                  kind: str = "accuracy", malformed_reward: float = -1.5, target_chars: int = 160,
                  length_penalty: float = 0.0) -> float:
    """Reward of one sampled rubric (pure).

    Well-formed: ``REWARDS[kind](s_pref, s_rej)`` (accuracy ∈ [0, 1] counts ties as 1/2; margin ∈ [-1, 1]
    is the mean score difference; NaN without pairs, which :func:`group_advantages` turns into advantage
    0) minus ``length_penalty`` per character of ``parsed.rubric.raw`` beyond ``target_chars``, never
    below the kind's floor (:data:`REWARD_FLOOR`). Malformed: ``malformed_reward``, which must lie below
    the floor, so a malformed rubric always gets the lowest reward.
    """
    if kind not in REWARDS:
        raise KeyError(f"unknown Rubricor reward {kind!r}; known: {sorted(REWARDS)}")
    if not malformed_reward < REWARD_FLOOR[kind]:
        raise ValueError(f"malformed_reward={malformed_reward} must be below the {kind} floor {REWARD_FLOOR[kind]}")
    if not parsed.ok:
        return float(malformed_reward)
    r = REWARDS[kind]([] if score_pref is None else score_pref, [] if score_rej is None else score_rej)
    extra = max(0, len(parsed.rubric.raw) - target_chars)
    return max(r - length_penalty * extra, REWARD_FLOOR[kind]) if r == r else r


# ------------------------------------------------------------------------------------------ model

def sft_loss(model, tokens, attn_mask, loss_mask):
    """Token-mean NLL of the positions in ``loss_mask``."""
    lp = token_logprobs(model, tokens, attn_mask)
    m = loss_mask.astype(jnp.float32)
    return -safe_div(jnp.sum(lp * m), jnp.sum(m))


def sft_loss_terms(graphdef):
    """SFT as a ``loss_terms_fn(params, minibatch, rng)``: the NLL summed over the ``loss_mask`` tokens over
    their count (the frozen part of the model in ``minibatch["consts"]``)."""

    def terms(params, mb, rng):
        lp = token_logprobs(nnx.merge(graphdef, params, mb["consts"]), mb["tokens"], mb["attn"])
        m = mb["loss_mask"].astype(jnp.float32)
        return {"loss_sum": -jnp.sum(lp * m), "loss_den": jnp.sum(m)}

    return terms


def rubricor_loss_terms(graphdef, temperature: float, policy_loss: str = "grpo"):
    """The Rubricor's GRPO step as a ``loss_terms_fn``: the registered policy loss on the completion tokens'
    log-probs at the sampling temperature, aggregated per sequence (``seq-mean-token-mean``)."""
    loss = POLICY_LOSSES.get(policy_loss)

    def terms(params, mb, rng):
        lp = token_logprobs(nnx.merge(graphdef, params, mb["consts"]), mb["tokens"], mb["attn"],
                            temperature=temperature)
        return loss(lp, mb, {**mb["hparams"], "agg": "seq-mean-token-mean", "kl": "k3"})

    return terms


class Rubricor:
    """Rubric generator: prompts, SFT and GRPO updates, sampling, snapshot/restore."""

    def __init__(self, cfg: RubricorConfig, serialize: SerializeConfig, limits: RubricLimits, *, seed: int = 0,
                 mesh: Mesh | None = None):
        self.cfg, self.ser, self.limits, self.seed = cfg, serialize, limits, seed
        model, self.tokenizer = build_lm(cfg.model, seed=seed)
        self.graphdef, params, self.frozen = nnx.split(model, trainable_filter(cfg.model), ...)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.sft_tx = make_optimizer(cfg.sft_lr, cfg.max_grad_norm)
        self.tx = make_optimizer(cfg.lr, cfg.max_grad_norm)
        self.hparams = {"clip_eps": cfg.clip_eps, "clip_eps_high": cfg.clip_eps, "beta": 0.0, "entropy_coef": 0.0}
        self.state = init_state(params, self.tx, hparams=self.hparams)
        self._sft_step = make_update(sft_loss_terms(self.graphdef), self.sft_tx, mode=cfg.parallel, mesh=mesh)
        self._grpo_step = make_update(rubricor_loss_terms(self.graphdef, cfg.temperature), self.tx,
                                      epochs=cfg.grpo_epochs, mode=cfg.parallel, mesh=mesh,
                                      metrics_fn=lambda t: finalize_terms(t)[1])
        self._logp = jax.jit(self._logp_impl)
        self.sampler = Sampler(model, self.tokenizer, eos_token_ids=(self.eos_id,), pad_id=self.pad_id)

    # -- state
    def snapshot(self) -> TrainState:
        return copy_tree(self.state)

    def restore(self, state: TrainState) -> None:
        self.state = copy_tree(state)

    def model(self):
        return nnx.merge(self.graphdef, self.state.params, self.frozen)

    # -- text
    def prompt_ids(self, query: str, summary: str) -> list[int]:
        if self.cfg.prompt not in PROMPTS:
            raise KeyError(f"unknown Rubricor prompt {self.cfg.prompt!r}; known: {sorted(PROMPTS)}")
        return bos(self.tokenizer) + encode(self.tokenizer, PROMPTS[self.cfg.prompt](query, summary, self.ser))

    def format_target(self, rubric) -> str:
        """A (teacher) rubric as an SFT target in this Rubricor's output format."""
        return get_format(self.cfg.output).write(rubric)

    def parse(self, text, query_id: str) -> ParseResult:
        """This Rubricor's output text as a rubric (its output format's parser; never raises)."""
        return get_format(self.cfg.output).parse(text, query_id, self.limits)

    def _pack(self, prompts: Sequence[list[int]], completions: Sequence[list[int]]):
        seqs = [p + c for p, c in zip(prompts, completions)]
        length = round_up(max(len(s) for s in seqs), 32)
        b = len(seqs)
        tokens = np.full((b, length), self.pad_id, np.int32)
        attn = np.zeros((b, length), bool)
        loss = np.zeros((b, length), np.float32)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            tokens[i, :len(p) + len(c)] = p + c
            attn[i, :len(p) + len(c)] = True
            loss[i, len(p):len(p) + len(c)] = 1.0
        return tokens, attn, loss

    # -- SFT
    def sft(self, prompts: Sequence[list[int]], targets: Sequence[str], *, steps: int, rng: np.random.Generator,
            log: Callable[[int, float], None] | None = None) -> list[float]:
        """``steps`` SFT updates on (prompt ids, target rubric text) examples; the GRPO optimiser restarts after."""
        comp = [encode(self.tokenizer, t) + [self.eos_id] for t in targets]
        st = init_state(self.state.params, self.sft_tx)
        losses, order = [], np.array([], int)
        bs = min(self.cfg.sft_batch, len(prompts))
        for i in range(steps):
            if len(order) < bs:
                order = np.concatenate([order, rng.permutation(len(prompts))])
            idx, order = order[:bs], order[bs:]
            tokens, attn, lm = self._pack([prompts[j] for j in idx], [comp[j] for j in idx])
            st, m = self._sft_step(st, {"tokens": tokens, "attn": attn, "loss_mask": lm}, jax.random.PRNGKey(i),
                                   self.frozen)
            losses.append(float(m["loss"]))
            if log is not None:
                log(i, losses[-1])
        self.state = init_state(st.params, self.tx, hparams=self.hparams)
        return losses

    # -- sampling
    def generate(self, prompts: Sequence[list[int]], *, temperature: float, seeds: Sequence[int]) -> list[tuple[list[int], str]]:
        """``(completion ids, text)`` per prompt; the completion stops at EOS (included in the ids)."""
        self.sampler.update(self.model())
        params = [SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=temperature, seed=int(s))
                  for s in seeds]
        outs = self.sampler.generate(list(prompts), params)
        return [(list(o.token_ids), o.text) for o in outs]

    def write(self, prompts: Sequence[list[int]], query_ids: Sequence[str]) -> list[ParseResult]:
        """Greedy rubrics for the prompts, parsed."""
        outs = self.generate(prompts, temperature=0.0, seeds=[0] * len(prompts))
        return [self.parse(text, q) for (_, text), q in zip(outs, query_ids)]

    # -- GRPO
    def _logp_impl(self, params, frozen, tokens, attn):
        return token_logprobs(nnx.merge(self.graphdef, params, frozen), tokens, attn,
                              temperature=self.cfg.temperature)

    def grpo_update(self, prompts: Sequence[list[int]], completions: Sequence[list[int]], rewards: Sequence[float]
                    ) -> dict[str, float]:
        """One GRPO update on G-major groups of samples (``len(prompts)`` = queries × G)."""
        adv = np.asarray(group_advantages(np.asarray(rewards, np.float32), self.cfg.group_size))
        tokens, attn, mask = self._pack(prompts, completions)
        old = self._logp(self.state.params, self.frozen, tokens, attn)
        batch = {"tokens": tokens, "attn": attn, "mask": mask, "old_logp": old, "advantages": adv}
        # grpo_epochs optimiser steps on the whole batch, in one jitted call; metrics: their mean
        self.state, metrics = self._grpo_step(self.state, batch, jax.random.PRNGKey(0), self.frozen)
        out = {k: float(v) for k, v in metrics.items()}
        out["adv_abs"] = float(np.mean(np.abs(adv)))
        return out
