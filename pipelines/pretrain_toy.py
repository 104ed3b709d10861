"""Pretrain the toy world's two reasoning models (DESIGN.md §2) and save them as HF-format folders.

Both are Llama-architecture :class:`roro_jax.models.Decoder` models trained from scratch with optax on
toy training texts (``<s>`` + prompt + reference solution + ``</s>``, character tokens), with the loss on
the solution tokens (and the final ``</s>``) only. A *small* model (narrow, shallow, short training) and a
clearly stronger *large* one. Each is written with :func:`roro_jax.models.save_pretrained` (config.json,
model.safetensors, tokenizer.json) plus ``train_meta.json`` (hyper-parameters, loss and eval curves, wall
time); the task they were trained on goes to ``<out>/task.json`` (a :class:`~roro_jax.tasks.toy.ToyConfig`).

Usage (the shipped folders were made with the defaults; see ``roro_jax/assets/toy/README.md``)::

    python -m pipelines.pretrain_toy [--out DIR] [--seed S] [--which small large]
                                     [--small-steps N] [--large-steps N] [--difficulty NAME] ...

Determinism: the training stream is ``toy.iter_problems(cfg, seed=seed, split="train")``, the weights are
initialised from ``seed`` (small) / ``seed + 1`` (large), and the update is one jitted function, so the same
seed gives the same weights on the same machine (XLA CPU reductions may differ across machines/thread
counts).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from roro_jax.models import DecoderConfig, init_model, param_count, save_pretrained
from roro_jax.models.sampler import Sampler, SamplingParams
from roro_jax.tasks import toy
from roro_jax.tasks.problem import Problem

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "roro_jax" / "assets" / "toy"
TASK_FILE = "task.json"
META_FILE = "train_meta.json"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and training schedule of one toy model."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    steps: int
    lr: float = 2e-3
    warmup: int = 100
    batch: int = 64
    weight_decay: float = 0.01
    final_lr_frac: float = 0.1
    stop_at: float = 0.0  # > 0: stop at the first periodic eval whose greedy accuracy reaches this


# The shipped pair. head_dim = hidden / heads = 32 for both (vLLM CPU is known to work with 32).
SPECS: dict[str, ModelSpec] = {
    "small": ModelSpec(hidden=64, layers=2, heads=2, intermediate=192, steps=600),
    "large": ModelSpec(hidden=128, layers=4, heads=4, intermediate=384, steps=2500),
}
DEFAULT_TASK = "default"


# --------------------------------------------------------------------------- data
class CharCodec:
    """Fast text -> ids for the toy character tokenizer (identical to ``tokenizer.encode``)."""

    def __init__(self, tokenizer):
        self.vocab = dict(tokenizer.get_vocab())
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id)
        self.unk = int(tokenizer.unk_token_id)

    def encode(self, text: str) -> list[int]:
        return [self.vocab.get(c, self.unk) for c in text]

    def prompt_ids(self, problem: Problem) -> list[int]:
        """What the models are conditioned on: ``<s>`` + :func:`toy.prompt_text`."""
        return [self.bos] + self.encode(toy.prompt_text(problem))


def max_text_len(cfg: toy.ToyConfig) -> int:
    """An upper bound on ``len(<s> prompt solution </s>)`` in tokens for problems of ``cfg``."""
    vdig = max(len(str(cfg.min_value)), len(str(cfg.max_value)))
    odig = max(len(str(cfg.operand_min)), len(str(cfg.operand_max)))
    n = cfg.max_ops
    prompt = (n + 1) * odig + 3 * n + 2
    steps = n * (vdig + 3 + odig + 3 + vdig + 2)
    answer = len(toy.ANSWER_PREFIX) + vdig
    return 1 + prompt + steps + answer + 1


def encode_batch(problems: Sequence[Problem], codec: CharCodec, length: int):
    """(tokens, attention mask, loss mask) [B, length]; right-padded. ``loss_mask[b, t]`` is 1 where
    ``tokens[b, t]`` is a solution token or the final EOS (the positions the loss is taken on)."""
    b = len(problems)
    tokens = np.full((b, length), codec.pad, np.int32)
    attn = np.zeros((b, length), bool)
    loss = np.zeros((b, length), bool)
    for i, p in enumerate(problems):
        prompt = codec.prompt_ids(p)
        sol = codec.encode(p.solution) + [codec.eos]
        ids = prompt + sol
        if len(ids) > length:
            raise ValueError(f"toy text of {len(ids)} tokens exceeds the sequence length {length}: {p.question!r}")
        tokens[i, :len(ids)] = ids
        attn[i, :len(ids)] = True
        loss[i, len(prompt):len(ids)] = True
    return tokens, attn, loss


def batches(cfg: toy.ToyConfig, codec: CharCodec, *, seed: int, batch: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The training stream: problems of the train split (``toy.iter_problems``, seeded), grouped by their
    number of operations so that each batch is padded only to the length its group needs (one compiled
    shape per group); a batch is emitted as soon as its group holds ``batch`` problems."""
    stream = toy.iter_problems(cfg, seed=seed, split="train", unique=False)
    lengths = {n: seq_len(replace(cfg, min_ops=n, max_ops=n)) for n in range(cfg.min_ops, cfg.max_ops + 1)}
    groups: dict[int, list[Problem]] = {n: [] for n in lengths}
    while True:
        p = next(stream)
        n = p.meta["n_ops"]
        groups[n].append(p)
        if len(groups[n]) == batch:
            yield encode_batch(groups[n], codec, lengths[n])
            groups[n] = []


def seq_len(cfg: toy.ToyConfig) -> int:
    """Training sequence length for ``cfg``: :func:`max_text_len` rounded up to a multiple of 8."""
    return int(math.ceil(max_text_len(cfg) / 8) * 8)


# --------------------------------------------------------------------------- model and update
def model_config(spec: ModelSpec, tokenizer) -> DecoderConfig:
    vocab = len(tokenizer)
    return DecoderConfig(
        vocab_size=vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_layers=spec.layers,
        num_heads=spec.heads, num_kv_heads=spec.heads, head_dim=spec.hidden // spec.heads, model_type="llama",
        rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=int(tokenizer.bos_token_id), eos_token_ids=(int(tokenizer.eos_token_id),),
        pad_token_id=int(tokenizer.pad_token_id), initializer_range=0.02)


def make_optimizer(spec: ModelSpec) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, spec.lr, warmup_steps=spec.warmup, decay_steps=max(spec.steps, spec.warmup + 1),
        end_value=spec.lr * spec.final_lr_frac)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on norms
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=spec.weight_decay, mask=decay_mask))


def make_train_step(graphdef, rest, tx: optax.GradientTransformation):
    """One jitted update ``(params, opt_state, tokens, attn, loss_mask) -> (params, opt_state, loss)``;
    params and optimizer state are donated."""

    def loss_fn(params, tokens, attn, loss_mask):
        model = nnx.merge(graphdef, params, rest)
        logits = model(tokens[:, :-1], attn[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
        w = loss_mask[:, 1:].astype(jnp.float32)
        return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

    def step(params, opt_state, tokens, attn, loss_mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, attn, loss_mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


# --------------------------------------------------------------------------- evaluation
def solve(sampler: Sampler, codec: CharCodec, problems: Sequence[Problem], *, temperature: float = 0.0,
          seed: int = 0, max_new_tokens: int = 64, logprobs: int = 0):
    """Whole solutions (up to EOS) for every problem; row i samples with seed ``seed + i``."""
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i,
                             logprobs=logprobs) for i in range(len(problems))]
    return sampler.generate([codec.prompt_ids(p) for p in problems], params)


def accuracy(sampler: Sampler, codec: CharCodec, problems: Sequence[Problem], **kw) -> dict:
    comps = solve(sampler, codec, problems, **kw)
    return toy.summarize_checks([toy.check_solution(p, c.text) for p, c in zip(problems, comps)])


def validation_set(cfg: toy.ToyConfig, n: int, *, report_n: int = 500) -> list[Problem]:
    """``n`` test-split problems (seed 1) that are not among the report's ``toy.heldout(report_n)``
    (seed 0): the periodic eval (and ``stop_at``) never sees the problems the figures are measured on."""
    reserved = {p.question for p in toy.heldout(report_n, cfg)}
    out = []
    for p in toy.iter_problems(cfg, seed=1, split="test", unique=True):
        if p.question not in reserved:
            out.append(p)
            if len(out) == n:
                return out


# --------------------------------------------------------------------------- training
def train_one(name: str, spec: ModelSpec, cfg: toy.ToyConfig, tokenizer, *, seed: int, eval_problems,
              eval_every: int, log=print, progress: bool = True):
    """Train one model; returns (model, meta dict)."""
    from tqdm import tqdm

    codec = CharCodec(tokenizer)
    length = seq_len(cfg)
    model = init_model(model_config(spec, tokenizer), seed=seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(spec)
    opt_state = tx.init(params)
    step_fn = make_train_step(graphdef, rest, tx)
    data = batches(cfg, codec, seed=seed, batch=spec.batch)
    sampler = Sampler(model, tokenizer)
    log(f"[{name}] {param_count(model):,} params  {spec}  max seq_len={length}")

    losses, evals = [], []
    t0 = time.perf_counter()
    running = None
    bar = tqdm(range(1, spec.steps + 1), desc=name, disable=not progress, mininterval=5.0)
    for it in bar:
        tokens, attn, lmask = next(data)
        params, opt_state, loss = step_fn(params, opt_state, tokens, attn, lmask)
        if it % 25 == 0 or it == spec.steps:
            loss_v = float(loss)
            running = loss_v if running is None else 0.8 * running + 0.2 * loss_v
            losses.append((it, loss_v))
            bar.set_postfix(loss=f"{running:.4f}")
        stop = False
        if eval_every and (it % eval_every == 0 or it == spec.steps) and eval_problems:
            nnx.update(model, params)
            sampler.update(model)
            s = accuracy(sampler, codec, eval_problems)
            evals.append({"step": it, "accuracy": s["accuracy"], "step_accuracy": s["step_accuracy"],
                          "elapsed_s": round(time.perf_counter() - t0, 1)})
            log(f"[{name}] step {it}: loss {running:.4f}  held-out greedy accuracy {s['accuracy']:.3f} "
                f"(step accuracy {s['step_accuracy']:.3f}, n={s['n']}, first errors {s['error_kinds']})  "
                f"{time.perf_counter() - t0:.0f}s")
            stop = 0 < spec.stop_at <= s["accuracy"]
        if stop:
            log(f"[{name}] stopping at step {it}: validation accuracy reached stop_at={spec.stop_at}")
            break
    steps_done = it
    wall = time.perf_counter() - t0
    nnx.update(model, params)
    meta = {"name": name, "spec": asdict(spec), "seed": seed, "params": param_count(model), "max_seq_len": length,
            "train_wall_s": round(wall, 1), "loss_curve": losses, "eval_curve": evals,
            "steps_done": steps_done, "examples_seen": steps_done * spec.batch, "jax": jax.__version__,
            "device": str(jax.devices()[0].device_kind)}
    return model, meta


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for small/, large/ and task.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--which", nargs="+", default=["small", "large"], choices=sorted(SPECS))
    ap.add_argument("--difficulty", default=DEFAULT_TASK, help=f"toy preset: {sorted(toy.DIFFICULTIES)}")
    ap.add_argument("--task", default=None, help="JSON object of ToyConfig field overrides")
    for name, spec in SPECS.items():
        for fld in ("steps", "hidden", "layers", "heads", "intermediate", "batch", "warmup"):
            ap.add_argument(f"--{name}-{fld}", type=int, default=getattr(spec, fld))
        ap.add_argument(f"--{name}-lr", type=float, default=spec.lr)
        ap.add_argument(f"--{name}-stop-at", type=float, default=spec.stop_at,
                        help="stop at the first eval whose validation accuracy reaches this (0: off)")
    ap.add_argument("--eval-every", type=int, default=500, help="held-out greedy eval every N steps (0: off)")
    ap.add_argument("--eval-n", type=int, default=128, help="held-out problems in the periodic eval")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    cfg = toy.difficulty(args.difficulty, **(json.loads(args.task) if args.task else {}))
    tokenizer = toy.build_tokenizer()
    eval_problems = validation_set(cfg, args.eval_n) if args.eval_n else []
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / TASK_FILE).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    print(f"task {cfg}; writing to {args.out}")
    metas = {}
    for i, name in enumerate(sorted(args.which, key=["small", "large"].index)):
        spec = replace(SPECS[name], **{f: getattr(args, f"{name}_{f}") for f in
                                       ("steps", "hidden", "layers", "heads", "intermediate", "batch", "warmup", "lr",
                                        "stop_at")})
        model, meta = train_one(name, spec, cfg, tokenizer, seed=args.seed + (name == "large"),
                                eval_problems=eval_problems, eval_every=args.eval_every,
                                progress=not args.no_progress)
        folder = args.out / name
        save_pretrained(model, folder, tokenizer=None)
        toy.save_tokenizer(folder, tokenizer)
        meta.update(task=cfg.to_dict(), command="python -m pipelines.pretrain_toy " + " ".join(argv or []))
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        print(f"[{name}] saved {folder} ({meta['params']:,} params, {meta['train_wall_s']:.0f}s)")
        metas[name] = meta
    return metas


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
