"""Where the router GRPO update's time goes: the jitted update cut into cumulative phases, timed side by side.

Each phase is one jitted program over the same ``epochs x minibatches`` steps as ``roro bench router-step``
(MLP F -> 128 -> 128 -> 2 tanh, clipped-ratio GRPO loss, clip + Adam), adding one piece at a time:

- ``forward``: the MLP's forward pass on every minibatch (contiguous row slices, no permutation);
- ``+loss``: and the GRPO loss terms;
- ``+backward``: the gradient of the loss (parameters moved by plain SGD so each step depends on the last);
- ``+permutation/gathers``: minibatches drawn by a fresh permutation each epoch (row gathers), as the update;
- ``+clip/Adam``: global-norm clipping + Adam instead of SGD;
- ``update``: the library's update itself (``RouterLearner.update``: the above plus the metrics).

The cost of a phase is the difference between its row and the one above (wall time, and the process's CPU
time, which a busy machine disturbs less). Rows are timed interleaved
(medians of ``--repeats``) with XLA's f32 matmul at the router's largest shape ([rows, 128] @ [128, 128],
chained with tanh, as ``router_step.py`` measures it), so the update's share of the matmul rate compares
runs under the same load.

    python benchmarks/router_step_phases.py                   # table at 8,192 routing steps
    python benchmarks/router_step_phases.py --steps-total 1024 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script (python benchmarks/NAME.py): import the checkout's roro_jax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("forward", "+loss", "+backward", "+permutation/gathers", "+clip/Adam", "update")


def phase_programs(B: int, T: int, F: int, epochs: int, minibatches: int):
    """``{phase: run()}`` (each run blocks until its result is ready) and the routing-step FLOPs basis."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from benchmarks.router_step import make_batch
    from roro_jax.config import load_config
    from roro_jax.rl.trainer import RouterLearner
    from roro_jax.rl.update import make_optimizer, router_loss_terms

    cfg = load_config(None, [f"grpo.epochs={epochs}", f"grpo.minibatches={minibatches}", "grpo.lr=3e-4"])
    learner = RouterLearner(cfg, F)
    gd = learner.graphdef
    batch = jax.device_put(make_batch(B, T, F))
    key = jax.random.PRNGKey(0)
    params0 = jax.tree.map(jnp.array, learner.state.params)  # a copy: the learner's update donates its state
    hp = {k: jnp.float32(v) for k, v in learner.hparams.items()}
    loss_terms = router_loss_terms(gd, cfg.grpo.loss, agg=cfg.grpo.agg, kl=cfg.grpo.kl)
    tx = make_optimizer(3e-4, cfg.grpo.max_grad_norm)
    mb = B // minibatches

    def forward(p, d, k):
        return jnp.sum(nnx.merge(gd, p)(d["features"]))

    def loss(p, d, k):
        return loss_terms(p, d, k)["loss_sum"]

    def program(value_fn, backward: bool, permute: bool, adam: bool):
        @jax.jit
        def run(params, batch, rng):
            def step(carry, xs):
                p, o, acc = carry
                idx, k = xs
                if permute:
                    data = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch)
                else:
                    data = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, idx[0], mb), batch)
                data["hparams"] = hp
                if not backward:  # the value alone, fed back so no step can be hoisted or skipped
                    v = value_fn(p, data, k)
                    return (jax.tree.map(lambda a: a + 0.0 * v, p), o, acc + v), None
                v, g = jax.value_and_grad(value_fn)(p, data, k)
                if adam:
                    u, o = tx.update(g, o, p)
                    p = optax.apply_updates(p, u)
                else:
                    p = jax.tree.map(lambda a, b: a - 1e-6 * b, p, g)
                return (p, o, acc + v), None

            def epoch(carry, k):
                kp, kl = jax.random.split(k)
                order = jax.random.permutation(kp, B) if permute else jnp.arange(B)
                return jax.lax.scan(step, carry, (order.reshape(minibatches, mb), jax.random.split(kl, minibatches)))

            carry = (params, tx.init(params), jnp.zeros((), jnp.float32))
            return jax.lax.scan(epoch, carry, jax.random.split(rng, epochs))[0]

        return lambda: jax.block_until_ready(run(params0, batch, key))

    def update():
        jax.block_until_ready(learner.update(batch, key))
        jax.block_until_ready(learner.state)

    rows, H, n_inner = B * T // minibatches, 128, 50
    a = jax.random.normal(jax.random.PRNGKey(1), (rows, H), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(2), (H, H), jnp.float32)
    chain = jax.jit(lambda a, w: jax.lax.fori_loop(0, n_inner, lambda i, x: jnp.tanh(x @ w), a))

    return {
        "matmul": lambda: jax.block_until_ready(chain(a, w)),
        "forward": program(forward, False, False, False),
        "+loss": program(loss, False, False, False),
        "+backward": program(loss, True, False, False),
        "+permutation/gathers": program(loss, True, True, False),
        "+clip/Adam": program(loss, True, True, True),
        "update": update,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps-total", type=int, default=8192, help="routing steps per update (B x T)")
    p.add_argument("--steps", type=int, default=16, help="routing steps per trajectory (T)")
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=9, help="interleaved timed repeats (medians)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)

    from benchmarks.router_step import update_flops
    from roro_jax.benchmarking import annotate, machine, summary_line

    start = machine()
    T, F = args.steps, args.features
    B = args.steps_total // T
    runs = phase_programs(B, T, F, args.epochs, args.minibatches)
    for run in runs.values():
        run()  # compile and warm up
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}  # process CPU time (all threads): steadier than wall time on a busy machine
    for _ in range(args.repeats):
        for name, run in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {name: statistics.median(v) for name, v in times.items()}
    cmed = {name: statistics.median(v) for name, v in cpu.items()}
    rows_mb = B * T // args.minibatches
    peak = {"xla_gflops": 2.0 * rows_mb * 128 * 128 * 50 / med.pop("matmul") / 1e9,
            "shape": f"[{rows_mb},128]@[128,128]"}
    flops = update_flops(B, T, F, epochs=args.epochs)
    rows, prev, cprev = [], 0.0, 0.0
    for name in PHASES:
        rows.append({"phase": name, "ms": med[name] * 1e3, "delta_ms": (med[name] - prev) * 1e3,
                     "share_of_update": (med[name] - prev) / med["update"], "cpu_ms": cmed[name] * 1e3,
                     "cpu_delta_ms": (cmed[name] - cprev) * 1e3,
                     "cpu_share_of_update": (cmed[name] - cprev) / cmed["update"]})
        prev, cprev = med[name], cmed[name]
    result = {"benchmark": "router_step_phases", "routing_steps": B * T, "phases": rows,
              "update_gflops": flops / med["update"] / 1e9, "matmul_peak": peak,
              "matmul_share": flops / med["update"] / 1e9 / peak["xla_gflops"], "repeats": args.repeats,
              "config": {"F": F, "epochs": args.epochs, "minibatches": args.minibatches}}
    annotate(result, start)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"router GRPO update at {B * T} routing steps, {args.epochs} epochs x {args.minibatches} minibatches "
              f"(cumulative phases, medians of {args.repeats})")
        print(f"{'phase':>22} {'ms':>8} {'+ms':>8} {'share':>6} {'CPU ms':>8} {'+CPU ms':>8} {'share':>6}")
        for r in rows:
            print(f"{r['phase']:>22} {r['ms']:>8.2f} {r['delta_ms']:>8.2f} {r['share_of_update']:>6.0%} "
                  f"{r['cpu_ms']:>8.2f} {r['cpu_delta_ms']:>8.2f} {r['cpu_share_of_update']:>6.0%}")
        print(f"update {result['update_gflops']:.1f} GF/s = {result['matmul_share']:.0%} of XLA's f32 matmul at "
              f"{peak['shape']} ({peak['xla_gflops']:.1f} GF/s)")
        print(summary_line(result))
    return result


if __name__ == "__main__":
    main()
