"""Does the rubric Judge read the rubric's content? Same stored exploration, same pairs; the Judge trained and
read with (a) the teacher's checkpoint rubrics, (b) the same rubrics given to the wrong queries (a fixed
derangement: right form, wrong content), (c) no rubric. The validation pairs by default (``--splits``). Seeds change the Judge's
initialisation and minibatch order.

    python benchmarks/judge_rubric_content.py RUN_DIR --seeds 0 1 2 --steps 80 --arms oracle shuffled
    python benchmarks/judge_rubric_content.py RUN_DIR --arms oracle shuffled --layout interleaved
    python benchmarks/judge_rubric_content.py RUN_DIR --judge-model toy:small   # a backbone that errs more
    python benchmarks/judge_rubric_content.py RUN_DIR --process-label checkpoints  # pairs rebuilt, see below

RUN_DIR: a `roro demo` out_dir (exploration/trajectories.jsonl, exploration/queries.json, pairs.jsonl).
With ``--process-label NAME`` the pairs are rebuilt from the trajectories with ``configs/demo.yaml``'s
``pairs`` keys and ``pairs.process_label=NAME`` instead of read from ``pairs.jsonl`` (nothing is written to
RUN_DIR).
One JSON line per (steps, seed, arm): accuracy on the split, overall and by pair kind (RESULTS.md, "make
demo's Judge against issue 15's bar").
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from roro_jax.config import load_config
from roro_jax.pairs import build_pairs, read_pairs
from roro_jax.rubric.judge import Judge, pair_correct
from roro_jax.rubric.loop import accuracy_report, make_data
from roro_jax.rubric.teacher import checkpoint_rubric
from roro_jax.store import read_trajectory_file
from roro_jax.types import Rubric


ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--steps", type=int, nargs="+", default=[80, 320])
ap.add_argument("--arms", nargs="+", default=["oracle", "shuffled", "norubric"])
ap.add_argument("--splits", nargs="+", default=["val"])
ap.add_argument("--layout", default="after", help="the Judge's input layout (rubric.judge.layout)")
ap.add_argument("--judge-model", default=None, help="the Judge's backbone (rubric.judge.model.path)")
ap.add_argument("--process-label", default=None,
                help="rebuild the pairs with this pairs.process_label (quality | checkpoints) instead of reading "
                     "RUN_DIR/pairs.jsonl")
a = ap.parse_args()
run = Path(a.run)
cfg = load_config("configs/demo.yaml", [])
rc = dataclasses.replace(cfg.rubric, seed=cfg.seed, out_dir=None)
trajs = read_trajectory_file(run / "exploration" / "trajectories.jsonl")
queries = json.loads((run / "exploration" / "queries.json").read_text())
if a.process_label:
    pairs = build_pairs(trajs, dataclasses.replace(cfg.pairs, process_label=a.process_label), seed=cfg.seed,
                        queries=queries)
else:
    pairs = read_pairs(run / "pairs.jsonl")
data = make_data(trajs, pairs, queries, rc)
teacher = {q: checkpoint_rubric(q, data.queries[q], max_criteria=rc.max_criteria) for q in data.query_ids}
qs = list(data.query_ids)
perm = np.random.default_rng(123).permutation(len(qs))
while np.any(perm == np.arange(len(qs))):  # a derangement: no query keeps its own rubric
    perm = np.random.default_rng(int(perm[0]) + 7).permutation(len(qs))
shuffled = {q: Rubric(q, teacher[qs[perm[i]]].criteria) for i, q in enumerate(qs)}
books = {"oracle": teacher, "shuffled": shuffled, "norubric": None}
print(json.dumps({"process_label": a.process_label or "pairs.jsonl",
                  "split": {s: {k: sum(p.kind == k for p in data.pairs_of(s)) for k in ("outcome", "process")}
                            for s in ("train", "val", "test")}}), flush=True)
for steps in a.steps:
    for seed in a.seeds:
        for arm in a.arms:
            t0 = time.time()
            jc = dataclasses.replace(rc.judge, use_rubric=arm != "norubric", layout=a.layout)
            if a.judge_model:
                jc = dataclasses.replace(jc, model=dataclasses.replace(jc.model, path=a.judge_model))
            judge = Judge(jc, rc.serialize, max_criteria=rc.max_criteria, seed=seed)
            judge.train_steps(data.train, data.by_id, data.queries, books[arm], steps=steps,
                              rng=np.random.default_rng(seed))
            for s in a.splits:
                c = pair_correct(judge, data.pairs_of(s), data.by_id, data.queries, books[arm])[0]
                rep = accuracy_report(c, data.pairs_of(s))
                print(json.dumps({"arm": arm, "steps": steps, "seed": seed, "split": s,
                                  **{k: rep[k] for k in rep if k.startswith("acc") or k.startswith("n")},
                                  "s": round(time.time() - t0)}), flush=True)
