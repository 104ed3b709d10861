"""What a toy world's models can do: greedy accuracy of its small and large model by number of operations,
and how the large model continues a *wrong* prefix (repairs it or trusts it), by number of operations.

``python -m pipelines.world_models --world lucky`` prints a markdown table; the figures in
``roro_jax/assets/toy/README.md`` come from this command. Problems are the test split (seeded), decoding
is greedy, ``--n`` problems per operation count.

Repair/trust: a reference solution is cut after a step ``at`` (drawn uniformly before the last operation)
whose result is off by ±1 or ±2 (:func:`roro_jax.tasks.toy.corrupted_solution`); the large model continues
it. *repaired*: its answer is the true answer (it recomputed the running value from the question);
*trusted*: its answer is what the wrong prefix implies.

Own errors (``own_*`` columns): the same, on the small model's *own* wrong steps instead of constructed ones:
each greedy small solution whose first wrong step is an operation step (the checker's verdict) is cut
after that step and the large model continues it (:func:`own_error_rates`). This is what a router meets:
the steps it keeps are the small model's, and their errors are mostly a misread operand with right
arithmetic, not a wrong result.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

import numpy as np

from pipelines.pretrain_toy import CharCodec
from roro_jax.models import from_pretrained
from roro_jax.models.sampler import Sampler, SamplingParams
from roro_jax.tasks import toy
from roro_jax.worlds.variants import WORLDS, get_world


def _final(text: str) -> str:
    steps = toy.split_steps(text) if text.strip() else []
    return steps[-1] if steps else ""


def greedy_texts(sampler: Sampler, prompts: Sequence[list[int]], max_new: int) -> list[str]:
    outs = sampler.generate(list(prompts), [SamplingParams(max_new_tokens=max_new, temperature=0.0)] * len(prompts))
    return [o.text for o in outs]


_RESULT_RE = re.compile(r"=\s*(-?\d+)\s*$")


def own_error_rates(problems: Sequence[toy.Problem], small_texts: Sequence[str],
                    large: tuple[Sampler, CharCodec], max_new: int) -> dict:
    """How the large model continues the small model's own first wrong step.

    ``small_texts``: the small model's (greedy) solutions of ``problems``; every one whose first wrong step is a written
    operation (``a op b = c``, wrong operand, operator or result) is cut after that step and the large model
    continues it greedily. Returns ``own_n`` (such solutions whose wrong step changes the answer),
    ``own_repaired`` (share whose continuation ends with the true answer) and ``own_trusted`` (share ending
    with the answer the written wrong step implies); NaN shares when ``own_n`` is 0.
    """
    prompts, targets = [], []
    for p, text in zip(problems, small_texts):
        chk = toy.check_solution(p, text)
        reds = toy.evaluate(*toy.parse_expression(p.question))
        fw = chk.first_wrong
        m = _RESULT_RE.search(chk.steps[fw]) if fw is not None and fw < min(len(chk.steps), len(reds)) else None
        if m is None:
            continue
        v = int(m.group(1))
        for r in reds[fw + 1:]:
            v = toy.apply_op(v, r.op, r.right)
        if v == int(p.answer):
            continue  # a wrong step that the rest of the chain cannot tell from a right one
        prefix = toy.STEP_SEP.join(chk.steps[:fw + 1]) + toy.STEP_SEP
        prompts.append(large[1].prompt_ids(p) + large[1].encode(prefix))
        targets.append((f"{toy.ANSWER_PREFIX}{p.answer}", f"{toy.ANSWER_PREFIX}{v}"))
    if not prompts:
        return {"own_n": 0, "own_repaired": float("nan"), "own_trusted": float("nan")}
    ans = [_final(t) for t in greedy_texts(large[0], prompts, max_new)]
    return {"own_n": len(prompts),
            "own_repaired": float(np.mean([a == r for a, (r, _) in zip(ans, targets)])),
            "own_trusted": float(np.mean([a == t for a, (_, t) in zip(ans, targets)]))}


def repair_rates(sampler: Sampler, codec: CharCodec, problems: Sequence[toy.Problem], max_new: int,
                 seed: int = 0) -> tuple[float, float]:
    """(repaired, trusted) shares of the large model's continuations of a wrong prefix."""
    rng = np.random.default_rng(seed)
    prompts, targets = [], []
    for p in problems:
        reds = toy.evaluate(*toy.parse_expression(p.question))
        at = int(rng.integers(0, len(reds) - 1))
        delta = int(rng.choice([d for d in (-2, -1, 1, 2) if reds[at].result + d >= 0]))
        pre, rep = toy.corrupted_solution(p, at, delta, repair=True)
        _, tru = toy.corrupted_solution(p, at, delta, repair=False)
        prompts.append(codec.prompt_ids(p) + codec.encode(toy.STEP_SEP.join(pre) + toy.STEP_SEP))
        targets.append((rep[-1], tru[-1]))
    outs = sampler.generate(prompts, [SamplingParams(max_new_tokens=max_new, temperature=0.0)] * len(prompts))
    ans = [_final(o.text) for o in outs]
    return (float(np.mean([a == r for a, (r, _) in zip(ans, targets)])),
            float(np.mean([a == t for a, (_, t) in zip(ans, targets)])))


def world_table(world: str, ops: Sequence[int], n: int, seed: int = 0) -> list[dict]:
    w = get_world(world)
    models = {k: from_pretrained(w.model_dir(k)) for k in ("small", "large")}
    samplers = {k: (Sampler(m, tok), CharCodec(tok)) for k, (m, tok) in models.items()}
    rows = []
    for k in ops:
        task = toy.ToyConfig(**{**w.test_task.__dict__, "min_ops": k, "max_ops": k})
        ps = toy.generate(n, task, seed=seed, split="test")
        max_new = 16 * (k + 2)
        texts = {m: greedy_texts(samplers[m][0], [samplers[m][1].prompt_ids(p) for p in ps], max_new)
                 for m in ("small", "large")}
        row = {"ops": k, **{f"{m}_acc": float(np.mean([toy.check_solution(p, t).correct for p, t in zip(ps, texts[m])]))
                            for m in ("small", "large")}}
        if k >= 2:
            row["repaired"], row["trusted"] = repair_rates(*samplers["large"], ps, max_new, seed=seed)
            row.update(own_error_rates(ps, texts["small"], samplers["large"], max_new))
        rows.append(row)
        print(f"  {world}: {k} operations done", file=sys.stderr, flush=True)
    return rows


def markdown(world: str, rows: list[dict], n: int) -> str:
    w = get_world(world)
    head = (f"**{world}** (small `{w.small}`, large `{w.large}`; greedy, {n} test problems per row)\n\n"
            "| operations | small accuracy | large accuracy | large repairs a wrong prefix | large trusts it "
            "| small's own wrong steps | large repairs them | large trusts them |\n"
            "|---|---|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['ops']} | {r['small_acc']:.2f} | {r['large_acc']:.2f} | {r.get('repaired', 0):.2f} "
                          f"| {r.get('trusted', 0):.2f} | {r.get('own_n', 0)} | {r.get('own_repaired', 0):.2f} "
                          f"| {r.get('own_trusted', 0):.2f} |\n" for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.world_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", choices=sorted(WORLDS), required=True)
    ap.add_argument("--ops", type=int, nargs="+", default=None,
                    help="operation counts (default: the world's training and test ranges)")
    ap.add_argument("--n", type=int, default=64, help="test problems per operation count")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    w = get_world(a.world)
    ops = a.ops or sorted({*range(w.train_task.min_ops, w.train_task.max_ops + 1),
                           *range(w.test_task.min_ops, w.test_task.max_ops + 1)})
    print(markdown(a.world, world_table(a.world, ops, a.n, a.seed), a.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
