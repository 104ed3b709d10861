"""Data parallel vs one device over a whole sampled run (synthetic world): how far do they drift apart?

Trains the same router twice, ``parallel.mode=single`` and ``shard_map`` over 8 (simulated) devices, for
each run length given, and reports the largest parameter difference, the first update whose sampled
actions differ, and the last update's mean reward of each. Not a speed benchmark: a correctness figure.

    python benchmarks/parallel_drift.py --updates 1 50 150 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if not __package__:  # run as a script (python benchmarks/NAME.py): import the checkout's roro_jax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASE = ["synthetic.queries=32", "router.hidden=[64,64]", "grpo.lr=1e-3", "checkpoint.every=1000",
        "checkpoint.keep=1"]


def drift(updates: int, work: Path) -> dict:
    import jax
    import numpy as np

    from pipelines.router_synthetic import train_router_synthetic
    from roro_jax.config import load_config

    runs = {}
    for mode in ("single", "shard_map"):
        cfg = load_config(None, BASE + [f"train.updates={updates}", f"out_dir={work / f'{mode}{updates}'}",
                                        f"parallel.mode={mode}"])
        learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(learner.params))])
        runs[mode] = (flat, hist)
    (a, ha), (b, hb) = runs["single"], runs["shard_map"]
    first = next((i + 1 for i, (x, y) in enumerate(zip(ha, hb)) if x["accuracy"] != y["accuracy"]), None)
    return {"updates": updates, "max_abs_param_diff": float(np.max(np.abs(a - b))),
            "max_abs_param": float(np.max(np.abs(a))), "first_update_with_different_samples": first,
            "final_reward": [ha[-1]["reward"], hb[-1]["reward"]]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, nargs="+", default=[1, 50, 150], help="run lengths (default: 1 50 150)")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = [drift(n, Path(tmp)) for n in args.updates]
    if args.json:
        print(json.dumps(res))
    else:
        for r in res:
            print(r)
    return res


if __name__ == "__main__":
    main()
