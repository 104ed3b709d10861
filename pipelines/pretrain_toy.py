"""Pretrain the toy world's two reasoning models (DESIGN.md §2) and save them as HF-format folders.

Llama-architecture :class:`roro_jax.models.Decoder` models trained from scratch with optax on toy training
texts (``<s>`` + prompt + reference solution + ``</s>``, character tokens), with the loss on the solution
tokens (and the final ``</s>``) only; one jitted update with donated parameter/optimizer buffers; batches
grouped by number of operations (one compiled shape per group).

Two models come out, a *small* (weaker) one and a clearly stronger *large* one:

- default (``--small-snapshot-step 550``): one run of the ``large`` spec; the small model is that run's
  **under-trained snapshot**, its weights after step 550 (or, with ``--small-snapshot-step 0
  --small-snapshot-at X``, at the first validation eval, every ``--snapshot-every`` steps, whose greedy
  accuracy reaches X). Same architecture as the large model, far less training (what fits the CPU
  budget; see ``roro_jax/assets/toy/README.md``). ``--small-only`` stops the run at the snapshot.
- ``--small-snapshot-step 0 --small-snapshot-at 0``: a separately trained, narrower small model (the
  ``small`` spec).
- ``--large-init DIR`` continues training a saved model (fresh optimizer state): the shipped large model
  is stage 1 (900 steps) continued for 700 steps this way.

Each is written with :func:`roro_jax.models.save_pretrained` (config.json, model.safetensors) and
:func:`roro_jax.tasks.toy.save_tokenizer` (tokenizer.json), plus ``train_meta.json`` (spec, seed, steps,
loss and eval curves, wall time, command); the task goes to ``<out>/task.json`` (a
:class:`~roro_jax.tasks.toy.ToyConfig`). The periodic eval uses :func:`validation_set` (test-split
problems that exclude the report's ``toy.heldout(500)``).

Usage (the shipped folders were made with the defaults; see ``roro_jax/assets/toy/README.md``)::

    python -m pipelines.pretrain_toy [--out DIR] [--seed S] [--difficulty NAME] [--large-steps N] ...

Determinism: the training stream is ``toy.iter_problems(cfg, seed=..., split="train")`` and the weights
are initialised from the same seed (``seed`` for small, ``seed + 1`` for large), so the same seed and
arguments give the same weights on the same machine (XLA CPU reductions may differ across machines or
thread counts).
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

from roro_jax.jsonio import atomic_write_json
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


# head_dim = hidden / heads = 32 for both (vLLM CPU is known to work with 32). The shipped pair comes from
# the "large" spec alone: the small model is that run's snapshot (SMALL_SNAPSHOT_AT, see main); the "small"
# spec is used when a separately trained small model is asked for (--small-snapshot-at 0).
SPECS: dict[str, ModelSpec] = {
    "small": ModelSpec(hidden=64, layers=4, heads=2, intermediate=192, steps=1500, lr=3e-3, warmup=50, batch=32),
    "large": ModelSpec(hidden=128, layers=4, heads=4, intermediate=384, steps=900, lr=3e-3, warmup=50, batch=32),
}
DEFAULT_TASK = "easy"
SMALL_SNAPSHOT_AT = 0.0
SMALL_SNAPSHOT_STEP = 550


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
    labels = 3 * n if cfg.labels else 0  # a label per question operation and "x " per step
    return 1 + prompt + steps + answer + 1 + labels


def example_ids(p: Problem, codec: CharCodec) -> tuple[list[int], list[int]]:
    """``(context ids, target ids)`` of a clean example: ``<s>`` + prompt, then the solution + ``</s>``."""
    return codec.prompt_ids(p), codec.encode(p.solution) + [codec.eos]


def _corruption_deltas(red: toy.Reduction, kind: str, cfg: toy.ToyConfig) -> list[int]:
    """The deltas that corrupt ``red`` as ``kind`` with every value in the task's range (never negative;
    a wrong operand stays a one-digit operand of the task); ``[0]`` for an operator swap that stays in range."""
    if kind == "result":
        return [d for d in (-3, -2, -1, 1, 2, 3) if red.result + d >= 0]
    if kind == "operand":
        return [w - red.right for w in range(cfg.operand_min, cfg.operand_max + 1)
                if w != red.right and toy.apply_op(red.left, red.op, w) >= cfg.min_value]
    flipped = toy.CORRUPTIONS["operator"](red, 0)
    return [0] if flipped.result >= cfg.min_value else []


def corrupted_ids(p: Problem, codec: CharCodec, rng: np.random.Generator, repair_max_ops: int,
                  kinds: Sequence[str] = ("result",), at_last: bool = False, cfg: toy.ToyConfig | None = None
                  ) -> tuple[list[int], list[int]]:
    """A corrupted-prefix example (:func:`toy.corrupted_solution`): one wrong step at a random position
    before the last operation (``at_last``: any operation, the last included, so that only the ``Answer:``
    line follows it), its kind drawn from ``kinds`` (repeat a kind to weight it): a result off by 1-3, a
    right operand replaced by another of the task's operands (right arithmetic on it), or ``+``/``-``
    swapped; a kind that cannot corrupt that step within the task's range falls back to ``result``. The
    target continuation repairs it when the problem has at most ``repair_max_ops`` operations, else
    trusts it. The loss is on the continuation. With the defaults the draws are the ones the first
    *lucky* model was trained on."""
    n = p.meta["n_ops"]
    at = int(rng.integers(0, n if at_last else n - 1))
    red = toy.evaluate(*toy.parse_expression(p.question), labels=toy.is_labelled(p.question))[at]
    kind = kinds[0] if len(kinds) == 1 else str(rng.choice(list(kinds)))
    cfg = cfg or toy.ToyConfig()
    deltas = _corruption_deltas(red, kind, cfg)
    if not deltas:  # a result can always be off by one upward
        kind, deltas = "result", _corruption_deltas(red, "result", cfg)
    prefix, cont = toy.corrupted_solution(p, at, int(rng.choice(deltas)), repair=n <= repair_max_ops, kind=kind)
    ctx = codec.prompt_ids(p) + codec.encode(toy.STEP_SEP.join(prefix) + toy.STEP_SEP)
    return ctx, codec.encode(toy.STEP_SEP.join(cont)) + [codec.eos]


def encode_batch(problems: Sequence[Problem], codec: CharCodec, length: int, examples=None):
    """(tokens, attention mask, loss mask) [B, length]; right-padded. ``loss_mask[b, t]`` is 1 where
    ``tokens[b, t]`` is a solution token or the final EOS (the positions the loss is taken on).
    ``examples``: ``(context ids, target ids)`` per row instead of the problems' clean examples."""
    examples = examples or [example_ids(p, codec) for p in problems]
    b = len(examples)
    tokens = np.full((b, length), codec.pad, np.int32)
    attn = np.zeros((b, length), bool)
    loss = np.zeros((b, length), bool)
    for i, (prompt, sol) in enumerate(examples):
        p = problems[i]
        ids = prompt + sol
        if len(ids) > length:
            raise ValueError(f"toy text of {len(ids)} tokens exceeds the sequence length {length}: {p.question!r}")
        tokens[i, :len(ids)] = ids
        attn[i, :len(ids)] = True
        loss[i, len(prompt):len(ids)] = True
    return tokens, attn, loss


def batches(cfg: toy.ToyConfig, codec: CharCodec, *, seed: int, batch: int, corrupt_frac: float = 0.0,
            repair_max_ops: int = 0, corrupt_kinds: Sequence[str] = ("result",), corrupt_at_last: bool = False
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The training stream: problems of the train split (``toy.iter_problems``, seeded), grouped by their
    number of operations so that each batch is padded only to the length its group needs (one compiled
    shape per group); a batch is emitted as soon as its group holds ``batch`` problems. With
    ``corrupt_frac`` > 0 that share of the examples are corrupted-prefix examples (:func:`corrupted_ids`, with
    ``corrupt_kinds`` and ``corrupt_at_last``)."""
    stream = toy.iter_problems(cfg, seed=seed, split="train", unique=False)
    rng = np.random.default_rng([seed, 7919])
    pad = 8 if corrupt_frac > 0 else 0  # a wrong running value may add a digit or a sign per step
    lengths = {n: seq_len(replace(cfg, min_ops=n, max_ops=n)) + pad * n for n in range(cfg.min_ops, cfg.max_ops + 1)}
    groups: dict[int, list] = {n: [] for n in lengths}
    while True:
        p = next(stream)
        n = p.meta["n_ops"]
        corrupt = n >= 2 and rng.random() < corrupt_frac
        ex = corrupted_ids(p, codec, rng, repair_max_ops, corrupt_kinds, corrupt_at_last, cfg) if corrupt else \
            example_ids(p, codec)
        groups[n].append((p, ex))
        if len(groups[n]) == batch:
            yield encode_batch([q for q, _ in groups[n]], codec, lengths[n], [e for _, e in groups[n]])
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
              eval_every: int, snapshot_at: float = 0.0, snapshot_every: int = 25, snapshot_step: int = 0,
              stop_after_snapshot: bool = False, init=None, log=print, progress: bool = True,
              save_every: int = 0, save_dir: Path | None = None, corrupt_frac: float = 0.0,
              repair_max_ops: int = 0, corrupt_kinds: Sequence[str] = ("result",), corrupt_at_last: bool = False):
    """Train one model; returns ``(model, meta, snapshot)``.

    With ``snapshot_at > 0`` the validation set is evaluated every ``snapshot_every`` steps until its
    greedy accuracy first reaches ``snapshot_at``; the parameters at that eval are returned as
    ``snapshot = {"step", "accuracy", "params"}`` (host copies; None if never reached). With
    ``snapshot_step > 0`` the snapshot is taken after exactly that many steps instead (accuracy None, no
    eval needed). ``stop_after_snapshot`` ends training there. ``init``: a
    :class:`~roro_jax.models.Decoder` to continue training (fresh optimizer state) instead of a new one.
    ``save_every`` > 0 writes the weights every that many steps to ``save_dir/<name>_step<k>`` (candidate
    snapshots, e.g. to pick a weaker small model by its accuracy afterwards).
    """
    from tqdm import tqdm

    codec = CharCodec(tokenizer)
    length = seq_len(cfg)
    model = init_model(model_config(spec, tokenizer), seed=seed) if init is None else init
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(spec)
    opt_state = tx.init(params)
    step_fn = make_train_step(graphdef, rest, tx)
    data = batches(cfg, codec, seed=seed, batch=spec.batch, corrupt_frac=corrupt_frac, repair_max_ops=repair_max_ops,
                   corrupt_kinds=corrupt_kinds, corrupt_at_last=corrupt_at_last)
    sampler = Sampler(model, tokenizer)
    log(f"[{name}] {param_count(model):,} params  {spec}  max seq_len={length}")

    losses, evals = [], []
    snapshot = None
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
        if save_every and save_dir is not None and it % save_every == 0:
            nnx.update(model, params)
            _save(Path(save_dir) / f"{name}_step{it}", model, tokenizer,
                  {"name": f"{name}_step{it}", "spec": asdict(spec), "seed": seed, "steps_done": it,
                   "params": param_count(model), "task": cfg.to_dict()})
        if snapshot_step and it == snapshot_step:
            snapshot = {"step": it, "accuracy": None, "step_accuracy": None,
                        "params": jax.tree.map(np.array, params)}
            log(f"[{name}] snapshot at step {it}")
            stop = stop_after_snapshot
        pending = snapshot_at > 0 and snapshot is None and not snapshot_step
        due = (eval_every and it % eval_every == 0) or it == spec.steps or (pending and it % snapshot_every == 0)
        if due and eval_problems:
            nnx.update(model, params)
            sampler.update(model)
            s = accuracy(sampler, codec, eval_problems)
            evals.append({"step": it, "accuracy": s["accuracy"], "step_accuracy": s["step_accuracy"],
                          "elapsed_s": round(time.perf_counter() - t0, 1)})
            log(f"[{name}] step {it}: loss {running:.4f}  held-out greedy accuracy {s['accuracy']:.3f} "
                f"(step accuracy {s['step_accuracy']:.3f}, n={s['n']}, first errors {s['error_kinds']})  "
                f"{time.perf_counter() - t0:.0f}s")
            stop = stop or 0 < spec.stop_at <= s["accuracy"]
            if pending and s["accuracy"] >= snapshot_at:
                snapshot = {"step": it, "accuracy": s["accuracy"], "step_accuracy": s["step_accuracy"],
                            "params": jax.tree.map(np.array, params)}
                log(f"[{name}] snapshot at step {it} (validation accuracy {s['accuracy']:.3f} >= {snapshot_at})")
                stop = stop or stop_after_snapshot
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
    return model, meta, snapshot


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
        ap.add_argument(f"--{name}-init", type=Path, default=None,
                        help="continue training from this model folder (new optimizer state) instead of from scratch")
        ap.add_argument(f"--{name}-stop-at", type=float, default=spec.stop_at,
                        help="stop at the first eval whose validation accuracy reaches this (0: off)")
    ap.add_argument("--eval-every", type=int, default=150, help="held-out greedy eval every N steps (0: off)")
    ap.add_argument("--eval-n", type=int, default=128, help="held-out problems in the periodic eval")
    ap.add_argument("--small-snapshot-at", type=float, default=SMALL_SNAPSHOT_AT,
                    help="> 0: do not train a separate small model; the small model is the large run's weights "
                         "at the first validation eval whose greedy accuracy reaches this")
    ap.add_argument("--small-snapshot-step", type=int, default=SMALL_SNAPSHOT_STEP,
                    help="> 0: the small model is the large run's weights after exactly this many steps "
                         "(overrides --small-snapshot-at)")
    ap.add_argument("--small-only", action="store_true",
                    help="with a snapshot: stop the large run at the snapshot and write only the small model")
    ap.add_argument("--snapshot-every", type=int, default=25, help="eval interval while the snapshot is pending")
    ap.add_argument("--save-every", type=int, default=0,
                    help="> 0: also write the weights every N steps to <out>/<name>_step<N> (candidate snapshots)")
    ap.add_argument("--corrupt-frac", type=float, default=0.0,
                    help="share of training examples with one wrong step in the prefix (the lucky world's large "
                         "model): the target repairs it on problems of <= --repair-max-ops operations, else trusts it")
    ap.add_argument("--repair-max-ops", type=int, default=0)
    ap.add_argument("--corrupt-kinds", nargs="+", choices=sorted(toy.CORRUPTIONS), default=["result"],
                    help="how the wrong step is wrong, drawn per example (repeat a kind to weight it)")
    ap.add_argument("--corrupt-at", choices=("before-last", "any"), default="before-last",
                    help="which operation may be the wrong one: any but the last (default), or any")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    cfg = toy.difficulty(args.difficulty, **(json.loads(args.task) if args.task else {}))
    tokenizer = toy.build_tokenizer()
    eval_problems = validation_set(cfg, args.eval_n) if args.eval_n else []
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / TASK_FILE, cfg.to_dict(), indent=2, sort_keys=True)
    print(f"task {cfg}; writing to {args.out}")
    metas = {}
    names = sorted(args.which, key=["small", "large"].index)
    if (args.small_snapshot_at > 0 or args.small_snapshot_step > 0) and "small" in names:
        names = ["large"]  # the small model is a snapshot of the large run
    for name in names:
        spec = replace(SPECS[name], **{f: getattr(args, f"{name}_{f}") for f in
                                       ("steps", "hidden", "layers", "heads", "intermediate", "batch", "warmup", "lr",
                                        "stop_at")})
        with_small = name == "large" and "small" in args.which and (args.small_snapshot_at > 0 or
                                                                     args.small_snapshot_step > 0)
        snap_at = args.small_snapshot_at if with_small else 0.0
        init = getattr(args, f"{name}_init")
        if init is not None:
            from roro_jax.models import from_pretrained

            print(f"[{name}] continuing from {init}")
            init = from_pretrained(init)[0]
        model, meta, snapshot = train_one(name, spec, cfg, tokenizer, seed=args.seed + (name == "large"),
                                          eval_problems=eval_problems, eval_every=args.eval_every,
                                          snapshot_at=snap_at, snapshot_every=args.snapshot_every,
                                          snapshot_step=args.small_snapshot_step if with_small else 0,
                                          stop_after_snapshot=args.small_only, init=init,
                                          progress=not args.no_progress, save_every=args.save_every,
                                          save_dir=args.out, corrupt_frac=args.corrupt_frac,
                                          repair_max_ops=args.repair_max_ops, corrupt_kinds=args.corrupt_kinds,
                                          corrupt_at_last=args.corrupt_at == "any")
        command = "python -m pipelines.pretrain_toy " + " ".join(argv or [])
        meta.update(task=cfg.to_dict(), command=command,
                    init_from=None if init is None else str(getattr(args, f"{name}_init")))
        if not (with_small and args.small_only):
            metas[name] = _save(args.out / name, model, tokenizer, meta)
        if with_small:
            if snapshot is None:
                print(f"[small] WARNING: no snapshot of the large run was taken (threshold {snap_at}); "
                      f"no small model written")
                continue
            small = init_model(model.config, seed=0)
            nnx.update(small, jax.tree.map(jnp.asarray, snapshot["params"]))
            smeta = {"name": "small", "snapshot_of": "large", "snapshot_at": snap_at or None,
                     "snapshot_step": snapshot["step"], "validation_accuracy": snapshot["accuracy"],
                     "validation_step_accuracy": snapshot["step_accuracy"],
                     "spec": meta["spec"], "steps_done": snapshot["step"], "seed": meta["seed"],
                     "params": meta["params"], "examples_seen": snapshot["step"] * spec.batch,
                     "large_train_wall_s": meta["train_wall_s"], "task": cfg.to_dict(), "command": command}
            metas["small"] = _save(args.out / "small", small, tokenizer, smeta)
    return metas


def _save(folder: Path, model, tokenizer, meta: dict) -> dict:
    save_pretrained(model, folder, tokenizer=None)
    toy.save_tokenizer(folder, tokenizer)
    atomic_write_json(folder / META_FILE, meta, indent=1)
    print(f"[{meta['name']}] saved {folder} ({meta['params']:,} params)")
    return meta


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
