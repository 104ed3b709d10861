"""Judge training throughput: the jitted JAX Bradley–Terry step vs the same model and step in PyTorch eager.

Both sides run in this process on the same batch of Judge inputs (rubric Judge, compact serialisation,
real replay-world-shaped sequences synthesised here: ``--pairs`` pairs, both sides padded to ``--length``
tokens, 4 criterion markers each) and the same weights: the Flax NNX decoder (Llama architecture,
``--hidden``/``--layers``) + 1-output score head, copied into ``transformers``' ``LlamaModel`` + a
``torch.nn.Linear`` head. One step = forward of preferred and rejected inputs, per-criterion sigmoid,
weighted score, BT loss ``-log σ(β(s_p - s_r))``, backward, global-norm clipping + Adam. The JAX step is
:func:`roro_jax.rubric.judge.make_judge_update` (``single`` mode, donated state). The figure of merit is
pairs per second; ``ratio`` = JAX / PyTorch from medians of interleaved repeats. The forward scores of
both sides are compared first (``max_score_diff``).

    python benchmarks/judge_train.py            # table
    python benchmarks/judge_train.py --json     # one JSON object (field ``ratio``)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script (python benchmarks/NAME.py): import the checkout's roro_jax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roro_jax.benchmarking import annotate, machine, progress, summary_line  # noqa: E402


def make_batch(pairs: int, length: int, vocab: int, k: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for side in ("pref", "rej"):
        lens = rng.integers(int(0.7 * length), length + 1, pairs)
        ids = rng.integers(4, vocab, (pairs, length)).astype(np.int32)
        mask = np.arange(length)[None] < lens[:, None]
        ids[~mask] = 0
        pos = np.stack([np.sort(rng.choice(np.arange(int(0.5 * l), l), k, replace=False)) for l in lens]).astype(np.int32)
        w = rng.uniform(0.1, 1, (pairs, k)).astype(np.float32)
        out.update({f"{side}_ids": ids, f"{side}_mask": mask, f"{side}_pos": pos, f"{side}_w": w / w.sum(1, keepdims=True)})
    out["pair_weight"] = np.ones(pairs, np.float32)
    return out


def jax_side(args, batch):
    import jax
    from flax import nnx

    from roro_jax.rl.update import init_state
    from roro_jax.rubric.judge import JudgeConfig, build_judge, judge_optimizer, make_judge_update, pair_scores, split_judge
    from roro_jax.rubric.lm import LMSpec

    cfg = JudgeConfig(model=LMSpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                                   intermediate_size=args.intermediate), lr=1e-3)
    model, tok = build_judge(cfg, seed=0)
    head = np.random.default_rng(1).normal(0, 0.5, (args.hidden, 1)).astype(np.float32)
    model.head_kernel[...] = head
    graphdef, params, frozen = split_judge(model, cfg)
    tx = judge_optimizer(cfg)
    update = make_judge_update(graphdef, tx, cfg.bt_scale, mode="single", donate=True)
    state = init_state(params, tx)
    scores = jax.jit(lambda p, f, b: pair_scores(nnx.merge(graphdef, p, f), b))
    sp, sr = scores(params, frozen, batch)
    box = {"state": state}

    def step():
        box["state"], m = update(box["state"], frozen, batch)
        jax.block_until_ready(m["loss"])

    return model, (np.asarray(sp), np.asarray(sr)), step


def torch_side(args, batch, jax_model):
    import torch
    import transformers

    from roro_jax.models import hf_state_dict

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    c = jax_model.backbone.config
    hf_cfg = transformers.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                                      intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                                      num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                                      head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
                                      max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=False)
    lm = transformers.LlamaForCausalLM(hf_cfg)
    lm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in hf_state_dict(jax_model.backbone).items()},
                       strict=False)
    body = lm.model.train()
    head = torch.nn.Linear(c.hidden_size, 1)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.array(jax_model.head_kernel[...])).T)
        head.bias.zero_()
    params = list(body.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    tb = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    beta = 8.0

    def scores():
        ids = torch.cat([tb["pref_ids"], tb["rej_ids"]]).long()
        mask = torch.cat([tb["pref_mask"], tb["rej_mask"]]).long()
        pos = torch.cat([tb["pref_pos"], tb["rej_pos"]]).long()
        w = torch.cat([tb["pref_w"], tb["rej_w"]])
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        h = body(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        picked = torch.gather(h, 1, pos[..., None].expand(-1, -1, h.shape[-1]))
        p = torch.sigmoid(head(picked)[..., 0])
        s = (p * w).sum(-1) / w.sum(-1)
        b = tb["pref_ids"].shape[0]
        return s[:b], s[b:]

    with torch.no_grad():
        sp, sr = scores()

    def step():
        opt.zero_grad(set_to_none=True)
        a, b = scores()
        loss = (torch.nn.functional.softplus(-beta * (a - b)) * tb["pair_weight"]).sum() / tb["pair_weight"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return (sp.numpy(), sr.numpy()), step


def run(args) -> dict:
    from roro_jax.rubric.lm import char_tokenizer

    vocab = len(char_tokenizer())
    batch = make_batch(args.pairs, args.length, vocab)
    model, (jsp, jsr), jstep = jax_side(args, batch)
    (tsp, tsr), tstep = torch_side(args, batch, model)
    diff = float(max(np.abs(jsp - tsp).max(), np.abs(jsr - tsr).max()))
    for _ in range(args.warmup):
        jstep()
        tstep()
    tj, tt = [], []
    for _ in progress(range(args.repeats), "repeats"):
        t0 = time.perf_counter(); jstep(); tj.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); tstep(); tt.append(time.perf_counter() - t0)
    mj, mt = statistics.median(tj), statistics.median(tt)
    return {"benchmark": "judge_train", "pairs": args.pairs, "length": args.length, "hidden": args.hidden,
            "layers": args.layers, "jax_pairs_per_s": args.pairs / mj, "torch_pairs_per_s": args.pairs / mt,
            "ratio": mt / mj, "jax_step_s": mj, "torch_step_s": mt, "max_score_diff": diff,
            "baseline": "same model, weights, loss and optimiser in PyTorch eager (transformers LlamaModel)",
            "repeats": args.repeats}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--length", type=int, default=192)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=176)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    start = machine()
    res = annotate(run(args), start)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"Judge BT step, {res['pairs']} pairs x 2 sides x {res['length']} tokens, d={res['hidden']}, "
              f"{res['layers']} layers")
        print(f"  JAX (jit, donated): {res['jax_pairs_per_s']:.1f} pairs/s ({res['jax_step_s'] * 1e3:.0f} ms/step)")
        print(f"  PyTorch eager:      {res['torch_pairs_per_s']:.1f} pairs/s ({res['torch_step_s'] * 1e3:.0f} ms/step)")
        print(f"  ratio JAX/PyTorch:  {res['ratio']:.2f}   (forward scores agree to {res['max_score_diff']:.1e})")
        print(summary_line(res))
    return res


if __name__ == "__main__":
    main()
