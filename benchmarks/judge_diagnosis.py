"""Diagnosis of `make demo`'s rubric stage on a stored exploration (RESULTS.md, "make demo's Judge against
issue 15's bar").

    python benchmarks/judge_diagnosis.py RUN_DIR WHAT [key=value ...]

RUN_DIR: a `roro demo` out_dir (exploration/trajectories.jsonl, exploration/queries.json, pairs.jsonl);
WHAT: comma-separated parts: ``rubricor`` (SFT as in the stage, then the share of greedy checkpoint criteria
equal to the teacher's per split), ``stagejudge`` (after ``rubricor``: the Judge trained on those rubrics,
validation accuracy by kind), ``oracle`` (the Judge trained and read with the teacher's rubrics; add ``test``
to read the test split too), ``norubric``. Overrides apply to configs/demo.yaml.
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from roro_jax.config import load_config
from roro_jax.pairs import read_pairs
from roro_jax.rubric.judge import Judge, pair_correct
from roro_jax.rubric.loop import accuracy_report, make_data, write_rubrics, run_no_rubric
from roro_jax.rubric.rubricor import Rubricor
from roro_jax.rubric.teacher import checkpoint_rubric
from roro_jax.store import read_trajectory_file

run = Path(sys.argv[1])
what = sys.argv[2].split(",")
overrides = sys.argv[3:]
cfg = load_config("configs/demo.yaml", overrides)
rc = dataclasses.replace(cfg.rubric, seed=cfg.seed, out_dir=None)
trajs = read_trajectory_file(run / "exploration" / "trajectories.jsonl")
pairs = read_pairs(run / "pairs.jsonl")
queries = json.loads((run / "exploration" / "queries.json").read_text())
data = make_data(trajs, pairs, queries, rc)
out = {"overrides": overrides, "split": {s: len(data.pairs_of(s)) for s in ("train", "val", "test")}}
teacher = {q: checkpoint_rubric(q, data.queries[q], max_criteria=rc.max_criteria) for q in data.query_ids}
t0 = time.time()


def crit(r):
    return [c.text.strip() for c in r.criteria]


def agreement(book, qids):
    whole, per, n = [], 0, 0
    for q in qids:
        a, b = crit(book[q]), crit(teacher[q])
        whole.append(a == b)
        per += sum(x == y for x, y in zip(a, b))
        n += len(b)
    return {"rubric_exact": float(np.mean(whole)), "criteria_exact": per / n, "n_queries": len(qids)}


if "rubricor" in what:
    rng = np.random.default_rng(rc.seed)
    rub = Rubricor(rc.rubricor, rc.serialize, rc.limits(), seed=rc.seed + 1000)
    train_q = data.split_queries("train")
    if "base" in what:  # the untouched backbone, greedy
        parsed = write_rubrics(rub, data, data.query_ids)
        print("base example", [(data.queries[q], rub.write([rub.prompt_ids(data.queries[q], "")], [q])[0].reason)
                               for q in data.query_ids[:2]])
    prompts = [rub.prompt_ids(data.queries[q], data.summaries[q]) for q in train_q]
    targets = [rub.format_target(teacher[q]) for q in train_q]
    print("prompt example:", repr(rub.tokenizer.decode(prompts[0])), "target:", repr(targets[0]))
    losses = rub.sft(prompts, targets, steps=rc.rubricor.sft_steps, rng=rng)
    out["sft_loss"] = [losses[0], losses[-1]]
    parsed = write_rubrics(rub, data, data.query_ids)
    book = {q: (pr.rubric if pr.ok else None) for q, pr in parsed.items()}
    for s in ("train", "val", "test"):
        qs = data.split_queries(s)
        ok = [q for q in qs if book[q] is not None]
        out[f"rubricor_{s}"] = {**agreement(book, ok), "malformed": 1 - len(ok) / len(qs)}
    ex = data.split_queries("val")[:4]
    out["examples"] = {data.queries[q]: [rub.format_target(book[q]) if book[q] else parsed[q].reason,
                                         rub.format_target(teacher[q])] for q in ex}
    print(json.dumps(out, indent=1), f"{time.time() - t0:.0f}s", flush=True)

if "oracle" in what:
    judge = Judge(rc.judge, rc.serialize, max_criteria=rc.max_criteria, seed=rc.seed)
    judge.train_steps(data.train, data.by_id, data.queries, teacher, steps=rc.judge.steps,
                      rng=np.random.default_rng(rc.seed))
    for s in ("val", "test") if "test" in what else ("val",):
        c = pair_correct(judge, data.pairs_of(s), data.by_id, data.queries, teacher)[0]
        out[f"oracle_{s}"] = accuracy_report(c, data.pairs_of(s))
    print(json.dumps({k: v for k, v in out.items() if k.startswith("oracle")}, indent=1), f"{time.time() - t0:.0f}s",
          flush=True)

if "norubric" in what:
    nr = run_no_rubric(rc, data)
    out["no_rubric_val"] = nr["val"]
    if "test" in what:
        out["no_rubric_test"] = nr["test"]
    print(json.dumps({k: v for k, v in out.items() if k.startswith("no_rubric")}, indent=1), flush=True)

if "stagejudge" in what:  # the Judge as the stage trains it: on the Rubricor's rubrics (profile fallback)
    if "rubricor" not in what:
        sys.exit("stagejudge reads the rubrics that the rubricor part writes: give rubricor,stagejudge")
    from roro_jax.rubric.teacher import get_teacher
    book2 = {q: (book[q] if book[q] is not None else
                 get_teacher("profile")(q, data.queries[q], data.probes[q], max_criteria=rc.max_criteria))
             for q in data.query_ids}
    judge = Judge(rc.judge, rc.serialize, max_criteria=rc.max_criteria, seed=rc.seed)
    judge.train_steps(data.train, data.by_id, data.queries, book2, steps=rc.judge.steps,
                      rng=np.random.default_rng(rc.seed))
    c = pair_correct(judge, data.val, data.by_id, data.queries, book2)[0]
    out["stagejudge_val"] = accuracy_report(c, data.val)
    print("STAGEJUDGE_VAL", json.dumps(out["stagejudge_val"]), flush=True)

print(json.dumps(out))
