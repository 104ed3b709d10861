"""Peak memory of collecting into a trajectory store and training the router over it, at growing sizes.

Each phase runs in a fresh subprocess (``ru_maxrss`` is a high-water mark), once per store size:

* ``collect``: route N trajectories (N/G queries x G samples) of the synthetic world (``worlds.synthetic``:
  step features, a real router MLP sampling keep/escalate, the world's outcome) and append them to a
  :class:`~roro_jax.store.TrajectoryStore` in chunks, asking the store which keys are missing first (what a
  resumed collection does). Records have the real schema: per step text, token ids, features, action,
  log-prob, token counts.
* ``train``: one streaming pass of GRPO updates over every group in the store
  (:func:`roro_jax.rl.stream.train_on_store`).
* ``baseline``: the same imports and jit warm-up, no data: the process's floor.

Flat means peak RSS does not grow with N beyond the store's key index (about 200 bytes a trajectory, kept
by ``collect`` to skip stored keys).

    python benchmarks/memory.py --sizes 10000 100000        # table
    python benchmarks/memory.py --sizes 10000 100000 --json # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script (python benchmarks/NAME.py): import the checkout's roro_jax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roro_jax.benchmarking import annotate, machine, progress, summary_line  # noqa: E402

G, T, CHUNK_QUERIES = 8, 6, 128


def _cfg(out_dir: str):
    from roro_jax.config import load_config

    return load_config(None, [f"out_dir={out_dir}", f"grpo.group_size={G}", "grpo.epochs=1", "grpo.minibatches=1",
                              f"rollout.max_steps={T}", "router.hidden=[64,64]", "reward.weights.cost=0.3"])


def _route_jit(learner, n_queries: int, n_features: int):
    """One jitted program: sample queries, route every sample with the router, draw the outcomes."""
    import jax
    import jax.numpy as jnp

    from roro_jax.router.mlp import escalate_prob
    from roro_jax.worlds import synthetic

    key_ = (id(learner), n_queries, n_features)
    if key_ not in _ROUTE_CACHE:
        @jax.jit
        def route(params, key):
            kq, ka, ko = jax.random.split(key, 3)
            qb = synthetic.make_queries(kq, n_queries, T, n_features)
            feats = synthetic.expand_groups(qb.features, G)
            mask = synthetic.expand_groups(qb.mask, G)
            p = escalate_prob(learner.apply(params, feats))
            actions = jax.random.bernoulli(ka, p).astype(jnp.int32) * mask.astype(jnp.int32)
            correct, _ = synthetic.outcomes(ko, actions, synthetic.expand_groups(qb.critical, G), mask)
            return feats, mask, p, actions, correct

        _ROUTE_CACHE[key_] = route
    return _ROUTE_CACHE[key_]


_ROUTE_CACHE: dict = {}


def _trajectories(learner, q0: int, n_queries: int, key, n_features: int):
    """Route ``n_queries`` synthetic-world queries (ids q0..) x G samples with the learner's router."""
    import numpy as np

    from roro_jax.types import ESCALATE, LARGE, SMALL, Step, Trajectory

    feats, mask, p, actions, correct = _route_jit(learner, n_queries, n_features)(learner.params, key)
    feats, mask, p, actions, correct = map(np.asarray, (feats, mask, p, actions, correct))
    logp = np.log(np.where(actions == ESCALATE, p, 1.0 - p))
    rng = np.random.default_rng(q0)
    out = []
    for i in range(n_queries * G):
        steps = []
        for j in range(int(mask[i].sum())):
            esc = int(actions[i, j])
            ids = rng.integers(0, 32000, 20).tolist()
            steps.append(Step(index=j, text=f"Step {j}: {' '.join(map(str, ids[:12]))}\n\n", token_ids=ids,
                              model=LARGE if esc else SMALL, action=esc, action_logp=float(logp[i, j]),
                              features=feats[i, j].tolist(), small_tokens=20, large_tokens=20 * esc,
                              small_text="discarded proposal\n\n" if esc else None,
                              confidence=float(feats[i, j, 0]), finish_reason="stop"))
        out.append(Trajectory(query_id=f"q{q0 + i // G}", sample_idx=i % G, policy_id="router", steps=steps,
                              answer_text="42", correct=bool(correct[i]), seed=i))
    return out


def run_phase(phase: str, n: int, store_path: str) -> dict:
    import jax

    from roro_jax.rl.stream import train_on_store
    from roro_jax.rl.trainer import RouterLearner
    from roro_jax.router.features import get_family
    from roro_jax.store import TrajectoryStore

    cfg = _cfg(str(Path(store_path).parent))
    F = get_family(cfg.router.features).dim
    learner = RouterLearner(cfg, F)
    t0 = time.perf_counter()
    out: dict = {"phase": phase, "n": n}
    if phase == "collect":
        store = TrajectoryStore(store_path, fsync=False)
        written = 0
        for c, q0 in enumerate(range(0, n // G, CHUNK_QUERIES)):
            nq = min(CHUNK_QUERIES, n // G - q0)
            keys = [(f"q{q0 + i // G}", i % G, "router") for i in range(nq * G)]
            if not store.missing(keys):
                continue
            # always CHUNK_QUERIES queries (one compiled shape), the surplus of a last chunk dropped
            trajs = _trajectories(learner, q0, CHUNK_QUERIES, jax.random.PRNGKey(c), F)[: nq * G]
            written += store.add_many(trajs)
        out.update(written=written, stored=len(store), file_mb=round(os.path.getsize(store_path) / 2**20, 1))
    elif phase == "train":
        stats: dict = {}
        hist = train_on_store(learner, store_path, cfg, groups_per_batch=32, stats=stats)
        out.update(updates=len(hist), groups=stats["epoch0"]["groups"], max_open_groups=stats["epoch0"]["max_open"],
                   mean_reward=round(sum(h["reward"] for h in hist) / max(len(hist), 1), 4))
    elif phase == "baseline":
        learner.escalate_prob(jax.numpy.zeros((G, T, F)))
    else:
        raise ValueError(f"unknown phase {phase!r}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def measure(phase: str, n: int, store_path: str | os.PathLike) -> dict:
    """Run one phase in a fresh subprocess; its result row (with ``peak_rss_mb``)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    # as a module of its package when imported as one (an installed wheel: roro_jax.benchmarks.memory)
    me = ["-m", f"{__package__}.memory"] if __package__ else [__file__]
    r = subprocess.run([sys.executable, *me, "--phase", phase, "--n", str(n), "--store", str(store_path)],
                       capture_output=True, text=True, env=env, check=False)
    if r.returncode:
        raise RuntimeError(f"memory phase {phase} n={n} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.n, args.store)))
        return
    rows = []
    start = machine()
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure("baseline", 0, Path(tmp) / "none.jsonl"))
        for n in progress(args.sizes, "store sizes"):
            path = Path(tmp) / f"store_{n}.jsonl"
            for phase in ("collect", "train"):
                rows.append(measure(phase, n, path))
                if not args.json:
                    print(rows[-1], flush=True)
    res = annotate({"rows": rows, "arch": os.uname().machine, "cpus": os.cpu_count()}, start)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{'phase':9} {'N':>8} {'peak RSS MB':>12} {'seconds':>8}")
    for r in rows:
        print(f"{r['phase']:9} {r['n']:8d} {r['peak_rss_mb']:12.1f} {r['seconds']:8.1f}")
    print(summary_line(res))


if __name__ == "__main__":
    main()
