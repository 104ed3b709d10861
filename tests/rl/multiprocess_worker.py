"""Worker of tests/rl/test_multiprocess.py: train the synthetic router for a few GRPO updates, save params.

    python tests/rl/multiprocess_worker.py OUT.npz [key=value ...]

With ``parallel.num_processes=N parallel.process_id=i parallel.coordinator=HOST:PORT`` among the overrides
this is process ``i`` of a multi-process run (``RouterLearner`` joins the JAX distributed runtime); without
them it is a single-process run over all visible devices. The loop is ``run_training``'s (collect with the
current params, then update) minus checkpoints and logs. Besides the params it saves those of a second
run over the same recorded batches in which each process passes only its own rows (``batch_contract="local"``).
"""

from __future__ import annotations

import sys
import time

T0 = time.perf_counter()

import jax
import numpy as np

BASE = ["synthetic.queries=16", "synthetic.steps=8", "synthetic.features=8", "router.hidden=[16,16]",
        "grpo.lr=1e-2", "grpo.group_size=4", "grpo.epochs=2", "grpo.minibatches=2", "parallel.mode=shard_map"]
UPDATES = 3


def _log(msg: str) -> None:
    print(f"[worker {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(out: str, overrides: list[str]) -> None:
    from pipelines.router_synthetic import make_collect
    from roro_jax.config import load_config
    from roro_jax.rl.trainer import RouterLearner
    from roro_jax.rl.update import init_state

    cfg = load_config(None, BASE + list(overrides))
    _log("imported")
    learner = RouterLearner(cfg, cfg.synthetic.features)  # the first JAX use: joins the runtime if configured
    _log(f"learner ready: process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} devices")
    init_params = jax.tree.map(np.asarray, jax.device_get(learner.state.params))  # the update donates the state
    collect = make_collect(learner, cfg)
    key = jax.random.PRNGKey(cfg.seed)
    losses, batches, keys = [], [], []
    for k in range(UPDATES):  # as run_training does
        kc, ku = jax.random.split(jax.random.fold_in(key, k))
        batch, info = collect(learner.params, kc, k)
        metrics = learner.update(batch, ku)
        losses.append(float(metrics["loss"]))  # replicated output: readable on every process
        batches.append(jax.tree.map(np.asarray, batch))
        keys.append(ku)
        _log(f"update {k + 1}: loss {losses[-1]:.6f}")
    params = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(learner.params))]

    # the "local" contract: each process passes only its consecutive share of the rows of each batch
    # (through the learner's compiled update, told per call; one process has nothing to split)
    local_params = params
    if jax.process_count() > 1:
        state = init_state(init_params, learner.tx)
        P, i = jax.process_count(), jax.process_index()
        for batch, ku in zip(batches, keys):
            part = jax.tree.map(lambda x: x[i * (len(x) // P):(i + 1) * (len(x) // P)], batch)
            state, _ = learner._update(state, part, ku, batch_contract="local")
        local_params = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]
        _log("local-contract run done")

    np.savez(out, losses=np.array(losses), processes=jax.process_count(), devices=jax.device_count(),
             local_devices=jax.local_device_count(), batch_rows=len(batches[0]["actions"]),
             **{f"i{j}": x for j, x in enumerate(jax.tree.leaves(init_params))},
             **{f"p{j}": x for j, x in enumerate(params)}, **{f"l{j}": x for j, x in enumerate(local_params)})


if __name__ == "__main__":
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    run(sys.argv[1], sys.argv[2:])
    print("worker done", flush=True)
