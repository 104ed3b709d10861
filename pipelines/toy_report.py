"""Measure the shipped toy models on held-out toy problems: the four figures of issue 4 ("Must show").

For each sampling temperature (greedy = 0 and the others asked for), on ``--n`` held-out problems
(:func:`roro_jax.worlds.toy.toy_heldout`, seed 0), with the project's KV-cache sampler:

1. **small accuracy**: share of the small model's solutions that are right step by step
   (:func:`toy.check_solution`; every step right and the right ``Answer: N``). The final-answer-only
   accuracy is printed beside it.
2. **large accuracy**: the same for the large model.
3. **confidence AUC**: the small model's solutions are cut into steps exactly as the routing rollout cuts
   them (a step ends after ``"\\n\\n"`` or at EOS; its tokens include the delimiter/EOS). Every step up to
   the solution's first wrong one is labelled (steps before it: right; the first wrong step: wrong; later
   steps are not labelled, since they are not checked). Score = 1 - the step's mean chosen-token
   probability (``logprob`` family feature ``mean_chosen_prob``, from
   :func:`roro_jax.router.features.logprob_features`); AUC = P(score of a wrong step > score of a right
   step), ties counting one half. The AUC of ``min_chosen_prob`` is shown too.
4. **fixed by substitution**: for every wrong small solution, the large model writes the step at the
   small model's first wrong step (same prefix, same temperature, stop at ``"\\n\\n"``), then the small
   model continues to the end at the same temperature; the share of these failures whose new solution is
   right.

Usage::

    python -m pipelines.toy_report [--n 500] [--temperatures 0 0.7 1.0] [--json out.json]

Log-probs are those of the models' raw distributions (as vLLM reports them), whatever the temperature.
Row ``i`` samples with seed ``seed + i`` (the substitution and the continuation use other offsets).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from roro_jax.jsonio import atomic_write_json
from roro_jax.tasks import toy
from roro_jax.tasks.problem import Problem

DEFAULT_TEMPERATURE = 0.7
TOP_K = 5
MAX_SOLUTION_TOKENS = 96
MAX_STEP_TOKENS = 16


@dataclass
class TokStep:
    """One generated step: its text (delimiter included) and per-token chosen / top-k log-probs."""

    text: str
    logprobs: np.ndarray
    top_logprobs: np.ndarray


@dataclass
class Solution:
    steps: list[TokStep]
    check: toy.StepCheck
    checked_index: list[int] = field(default_factory=list)  # index in ``steps`` of each checked step


def split_into_steps(token_ids: Sequence[int], logprobs: np.ndarray, top_logprobs: np.ndarray, id_text,
                     eos_ids: set[int]) -> list[TokStep]:
    """Cut a generated token sequence into steps as the stepwise rollout would: a step ends right after
    the text ``"\\n\\n"`` completes, or at an EOS token (included)."""
    steps, start, text = [], 0, ""
    for i, t in enumerate(token_ids):
        text += "" if t in eos_ids else id_text(t)
        if t in eos_ids or text.endswith(toy.STEP_SEP):
            steps.append(TokStep(text, logprobs[start:i + 1], top_logprobs[start:i + 1]))
            start, text = i + 1, ""
    if start < len(token_ids):
        steps.append(TokStep(text, logprobs[start:], top_logprobs[start:]))
    return steps


def check_steps(problem: Problem, steps: list[TokStep]) -> Solution:
    """Check the non-empty steps (empty ones never enter the context, as in the rollout)."""
    idx = [i for i, s in enumerate(steps) if s.text.strip()]
    return Solution(steps, toy.check_solution(problem, [steps[i].text for i in idx]), idx)


def solve(sampler, tokenizer, problems: Sequence[Problem], *, temperature: float, seed: int,
          prefixes: Sequence[str] | None = None, stop: tuple[str, ...] = (), max_new_tokens: int = MAX_SOLUTION_TOKENS,
          logprobs: int = TOP_K):
    """Sample a continuation of ``prompt_text(problem) + prefix`` for every problem (batched)."""
    from roro_jax.models.sampler import SamplingParams

    prefixes = prefixes or [""] * len(problems)
    prompts = [list(tokenizer.encode(toy.prompt_text(p) + pre)) for p, pre in zip(problems, prefixes)]
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + i, stop=stop,
                             logprobs=logprobs) for i in range(len(problems))]
    return sampler.generate(prompts, params)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted one half (Mann-Whitney U / (n1 n0))."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def step_features(steps: Sequence[TokStep]) -> np.ndarray:
    """``logprob``-family features [n_steps, 16] of the given steps."""
    from roro_jax.router.features import LOGPROB_NAMES, logprob_features

    if not steps:
        return np.zeros((0, len(LOGPROB_NAMES)), np.float32)
    L = max(len(s.logprobs) for s in steps)
    k = max(s.top_logprobs.shape[1] for s in steps)
    top = np.full((len(steps), L, k), -np.inf, np.float32)
    chosen = np.zeros((len(steps), L), np.float32)
    mask = np.zeros((len(steps), L), np.float32)
    for i, s in enumerate(steps):
        n = len(s.logprobs)
        chosen[i, :n] = s.logprobs
        top[i, :n, :s.top_logprobs.shape[1]] = s.top_logprobs
        mask[i, :n] = 1
    return np.asarray(logprob_features(top, chosen, mask))


def confidence_auc(solutions: Sequence[Solution]) -> dict:
    """AUC of (1 - mean / min chosen-token prob) for predicting the first wrong step (see module doc)."""
    from roro_jax.router.features import LOGPROB_NAMES

    labelled, labels = [], []
    for sol in solutions:
        fw = sol.check.first_wrong
        n_checked = len(sol.checked_index)
        last = n_checked - 1 if fw is None or fw >= n_checked else fw
        for j in range(last + 1):
            labelled.append(sol.steps[sol.checked_index[j]])
            labels.append(fw is not None and j == fw)
    feats = step_features(labelled)
    labels = np.asarray(labels, bool)
    mean_p = feats[:, LOGPROB_NAMES.index("mean_chosen_prob")]
    min_p = feats[:, LOGPROB_NAMES.index("min_chosen_prob")]
    return {"auc_mean_chosen_prob": roc_auc(1 - mean_p, labels), "auc_min_chosen_prob": roc_auc(1 - min_p, labels),
            "n_wrong_steps": int(labels.sum()), "n_right_steps": int((~labels).sum()),
            "mean_conf_wrong": float(mean_p[labels].mean()) if labels.any() else float("nan"),
            "mean_conf_right": float(mean_p[~labels].mean()) if (~labels).any() else float("nan")}


def generate_solutions(sampler, tokenizer, problems, *, temperature: float, seed: int) -> list[Solution]:
    comps = solve(sampler, tokenizer, problems, temperature=temperature, seed=seed)
    eos = set(sampler.eos_token_ids)
    id_text = _id_text(tokenizer)
    return [check_steps(p, split_into_steps(c.token_ids, c.logprobs, c.top_logprobs, id_text, eos))
            for p, c in zip(problems, comps)]


def _id_text(tokenizer):
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    specials = set(tokenizer.all_special_ids)
    return lambda i: "" if i in specials else vocab.get(int(i), "")


def substitute_first_wrong(small_sampler, large_sampler, tokenizer, problems, solutions, *, temperature: float,
                           seed: int) -> dict:
    """The large model writes the small model's first wrong step; the small model continues (see doc)."""
    fails = [(p, s) for p, s in zip(problems, solutions) if not s.check.correct]
    if not fails:
        return {"n_failures": 0, "n_fixed": 0, "fixed_share": float("nan"), "large_step_right": float("nan")}
    prefixes = []
    for p, s in fails:
        kept = [s.steps[s.checked_index[j]].text for j in range(s.check.first_wrong)]
        pre = "".join(kept)
        if pre and not pre.endswith(toy.STEP_SEP):
            pre = pre.rstrip("\n") + toy.STEP_SEP
        prefixes.append(pre)
    fprobs = [p for p, _ in fails]
    big = solve(large_sampler, tokenizer, fprobs, temperature=temperature, seed=seed + 100_000, prefixes=prefixes,
                stop=(toy.STEP_SEP,), max_new_tokens=MAX_STEP_TOKENS, logprobs=0)
    eos = set(large_sampler.eos_token_ids)
    cont_prefixes, ended = [], []
    for pre, c in zip(prefixes, big):
        ended.append(c.finish_reason == "eos" or (c.token_ids and c.token_ids[-1] in eos))
        cont_prefixes.append(pre + c.text)
    rest = solve(small_sampler, tokenizer, fprobs, temperature=temperature, seed=seed + 200_000,
                 prefixes=cont_prefixes, logprobs=0)
    fixed = large_right = 0
    for (p, s), pre, c, r, e in zip(fails, prefixes, big, rest, ended):
        text = pre + c.text + ("" if e else r.text)
        fixed += toy.check_solution(p, text).correct
        chk = toy.check_solution(p, pre + c.text)
        large_right += chk.first_wrong is None or chk.first_wrong >= s.check.first_wrong + 1
    return {"n_failures": len(fails), "n_fixed": int(fixed), "fixed_share": fixed / len(fails),
            "large_step_right": large_right / len(fails)}


def measure(n: int = 500, temperatures: Sequence[float] = (0.0, DEFAULT_TEMPERATURE, 1.0), *, seed: int = 0,
            models=None, problems=None, log=print) -> dict:
    """All figures for every temperature: ``{temperature: {...}}`` (see the module docstring)."""
    from roro_jax.models.sampler import Sampler
    from roro_jax.worlds.toy import load_toy_models, toy_heldout

    if models is None:
        models = load_toy_models()
    (small, tok), (large, _), _task = models
    problems = problems if problems is not None else toy_heldout(n)
    small_s, large_s = Sampler(small, tok), Sampler(large, tok)
    out = {}
    for temp in temperatures:
        t0 = time.perf_counter()
        ssol = generate_solutions(small_s, tok, problems, temperature=temp, seed=seed)
        lsol = generate_solutions(large_s, tok, problems, temperature=temp, seed=seed)
        s_sum = toy.summarize_checks([s.check for s in ssol])
        l_sum = toy.summarize_checks([s.check for s in lsol])
        row = {"n": len(problems), "small_accuracy": s_sum["accuracy"],
               "small_final_answer_accuracy": s_sum["final_answer_accuracy"],
               "large_accuracy": l_sum["accuracy"], "large_final_answer_accuracy": l_sum["final_answer_accuracy"],
               "small_error_kinds": s_sum["error_kinds"], "small_first_wrong_hist": s_sum["first_wrong_hist"],
               "large_error_kinds": l_sum["error_kinds"]}
        row.update(confidence_auc(ssol))
        row.update(substitute_first_wrong(small_s, large_s, tok, problems, ssol, temperature=temp, seed=seed))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        out[temp] = row
        log(f"T={temp}: small {row['small_accuracy']:.3f}  large {row['large_accuracy']:.3f}  "
            f"AUC {row['auc_mean_chosen_prob']:.3f}  fixed {row['n_fixed']}/{row['n_failures']}  "
            f"({row['seconds']}s)")
    return out


def format_table(results: dict) -> str:
    temps = list(results)
    name = lambda t: "greedy" if t == 0 else f"T={t:g}"
    rows = [
        ("small accuracy (step-checked)", "small_accuracy", "{:.1%}"),
        ("small final-answer accuracy", "small_final_answer_accuracy", "{:.1%}"),
        ("large accuracy (step-checked)", "large_accuracy", "{:.1%}"),
        ("large final-answer accuracy", "large_final_answer_accuracy", "{:.1%}"),
        ("AUC: 1-mean_chosen_prob -> first wrong step", "auc_mean_chosen_prob", "{:.3f}"),
        ("AUC: 1-min_chosen_prob -> first wrong step", "auc_min_chosen_prob", "{:.3f}"),
        ("mean_chosen_prob, right / wrong steps", None, None),
        ("small failures fixed by substituting the first wrong step", None, None),
        ("large model's substituted step right", "large_step_right", "{:.1%}"),
    ]
    lines = ["| figure | " + " | ".join(name(t) for t in temps) + " |",
             "|---|" + "---|" * len(temps)]
    for label, key, fmt in rows:
        cells = []
        for t in temps:
            r = results[t]
            if key is not None:
                cells.append(fmt.format(r[key]))
            elif label.startswith("mean_chosen"):
                cells.append(f"{r['mean_conf_right']:.3f} / {r['mean_conf_wrong']:.3f} "
                             f"({r['n_right_steps']} / {r['n_wrong_steps']})")
            else:
                cells.append(f"{r['fixed_share']:.1%} ({r['n_fixed']}/{r['n_failures']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="held-out problems (toy_heldout(n), seed 0)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, DEFAULT_TEMPERATURE, 1.0])
    ap.add_argument("--seed", type=int, default=0, help="sampling seed base")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = measure(args.n, args.temperatures, seed=args.seed)
    print()
    print(format_table(results))
    print(f"\n{args.n} held-out problems; {time.perf_counter() - t0:.0f}s in all")
    if args.json:
        atomic_write_json(args.json, {str(k): v for k, v in results.items()}, indent=1, default=str)
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
