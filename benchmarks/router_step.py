"""Router GRPO update throughput: the jitted JAX update vs the same model/loss/optimiser in PyTorch eager.

Both sides run in this process on the same batch: router MLP (F -> 128 -> 128 -> 2, tanh), clipped-ratio
GRPO loss (token-mean), global-norm clipping + Adam, ``epochs x minibatches`` steps per update over
``B x T`` routing steps (default 512 trajectories x 16 steps = 8,192). The figure of merit is routing
steps processed per second of update (``B*T`` / seconds per update); ``ratio`` = JAX / PyTorch, from
medians of interleaved repeats. Also reported: achieved GFLOP/s of each side next to the machine's f32
matmul throughput at the router's shapes, measured in the same run (the physical limit), and the update's
share of it (``matmul_share`` = JAX GFLOP/s / XLA matmul GFLOP/s, per row and for the default size).

``--mode`` measures a parallel mode of the update (``single``, ``shard_map``, ``pmap``, ``jit_sharded``) over
``--devices`` devices (0 = all visible; on CPU simulate them with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) against the same PyTorch baseline. The result
records the CPU model, the core count and the load average (start and end); above the core count it
carries ``warning``: ratios are unreliable then.

    python benchmarks/router_step.py            # table
    python benchmarks/router_step.py --json     # one JSON object (field ``ratio``)
    roro bench router-step --mode shard_map     # the same, through the CLI
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script (python benchmarks/NAME.py): import the checkout's roro_jax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roro_jax.benchmarking import progress  # noqa: E402


# --------------------------------------------------------------------------------------------- data ---
def make_batch(B: int, T: int, F: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(T // 2, T + 1, B)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    return {
        "features": (rng.standard_normal((B, T, F)) * mask[..., None]).astype(np.float32),
        "actions": (rng.random((B, T)) < 0.3).astype(np.int32),
        "old_logp": (np.log(rng.uniform(0.2, 0.9, (B, T))) * mask).astype(np.float32),
        "mask": mask,
        "advantages": rng.standard_normal(B).astype(np.float32),
    }


def update_flops(B: int, T: int, F: int, hidden=(128, 128), epochs: int = 4) -> float:
    """Matmul FLOPs of one update (forward + backward over every row once per epoch)."""
    widths = [F, *hidden, 2]
    rows = B * T * epochs
    fwd = sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))
    bwd_w = fwd  # weight gradients
    bwd_x = sum(2 * a * b for a, b in zip(widths[1:-1], widths[2:]))  # input grads (not for layer 0)
    return float(rows * (fwd + bwd_w + bwd_x))


# ---------------------------------------------------------------------------------------------- JAX ---
def jax_runner(batch, F, hidden, epochs, minibatches, lr=3e-4, mode="single", devices=0):
    import jax

    from roro_jax.config import load_config
    from roro_jax.rl.trainer import RouterLearner

    cfg = load_config(None, [f"grpo.epochs={epochs}", f"grpo.minibatches={minibatches}", f"grpo.lr={lr}",
                             f"router.hidden=[{','.join(map(str, hidden))}]", f"parallel.mode={mode}",
                             f"parallel.devices={devices}"])
    learner = RouterLearner(cfg, F)
    # single: the batch already on the device; parallel modes place (shard) it themselves, as in training
    dev_batch = jax.device_put(batch) if mode == "single" else batch
    key = jax.random.PRNGKey(0)

    def run():
        m = learner.update(dev_batch, key)
        jax.block_until_ready((learner.state, m))

    run()  # compile
    return run


# ------------------------------------------------------------------------------------------ PyTorch ---
def torch_runner(batch, F, hidden, epochs, minibatches, lr=3e-4, clip_eps=0.2, max_grad_norm=1.0):
    import torch

    torch.manual_seed(0)
    layers, widths = [], [F, *hidden]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], 2))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    tb["actions"] = tb["actions"].long()
    B = tb["actions"].shape[0]
    mb = B // minibatches
    gen = torch.Generator().manual_seed(0)

    def run():
        for _ in range(epochs):
            perm = torch.randperm(B, generator=gen)
            for k in range(minibatches):
                idx = perm[k * mb:(k + 1) * mb]
                x, a = tb["features"][idx], tb["actions"][idx]
                old, mask, adv = tb["old_logp"][idx], tb["mask"][idx], tb["advantages"][idx]
                logp_all = torch.log_softmax(model(x), -1)
                logp = logp_all.gather(-1, a.unsqueeze(-1)).squeeze(-1)
                ratio = torch.exp((logp - old) * mask)
                pg1 = -adv[:, None] * ratio
                pg2 = -adv[:, None] * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
                loss = (torch.maximum(pg1, pg2) * mask).sum() / mask.sum().clamp_min(1.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                opt.step()

    run()  # warm-up
    return run, torch.get_num_threads()


# -------------------------------------------------------------------------------------- matmul peak ---
def matmul_peak(B: int, T: int, F: int, hidden, minibatches: int, repeats: int = 20) -> dict[str, float]:
    """f32 GFLOP/s of the router's largest matmul ([rows, H] @ [H, H]) in XLA and in torch."""
    import jax
    import jax.numpy as jnp
    import torch

    rows, H = B * T // minibatches, hidden[-1]
    a = np.random.default_rng(0).standard_normal((rows, H)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((H, H)).astype(np.float32)
    n_inner = 50
    flops = 2.0 * rows * H * H * n_inner

    @jax.jit
    def chain(a, w):
        return jax.lax.fori_loop(0, n_inner, lambda i, x: jnp.tanh(x @ w) , a)

    ja, jw = jnp.asarray(a), jnp.asarray(w)
    chain(ja, jw).block_until_ready()
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)

    def tchain():
        x = ta
        for _ in range(n_inner):
            x = torch.tanh(x @ tw)
        return x

    tchain()
    tj, tt = [], []
    for _ in range(repeats):
        t0 = time.perf_counter(); chain(ja, jw).block_until_ready(); tj.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); tchain(); tt.append(time.perf_counter() - t0)
    return {"xla_gflops": flops / statistics.median(tj) / 1e9, "torch_gflops": flops / statistics.median(tt) / 1e9,
            "shape": f"[{rows},{H}]@[{H},{H}]"}


# -------------------------------------------------------------------------------------------- main ---
def measure(B, T, F, hidden, epochs, minibatches, repeats, mode="single", devices=0, quiet=False):
    batch = make_batch(B, T, F)
    jrun = jax_runner(batch, F, hidden, epochs, minibatches, mode=mode, devices=devices)
    trun, threads = torch_runner(batch, F, hidden, epochs, minibatches)
    tj, tt = [], []
    # interleaved, so both sides see the same machine load
    for _ in progress(range(repeats), f"{B * T} routing steps ({mode})", disable=quiet):
        t0 = time.perf_counter(); jrun(); tj.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); trun(); tt.append(time.perf_counter() - t0)
    steps = B * T
    flops = update_flops(B, T, F, hidden, epochs)
    mj, mt = statistics.median(tj), statistics.median(tt)
    return {
        "routing_steps": steps, "jax_s": mj, "torch_s": mt,
        "jax_steps_per_s": steps / mj, "torch_steps_per_s": steps / mt, "ratio": mt / mj,
        "jax_gflops": flops / mj / 1e9, "torch_gflops": flops / mt / 1e9, "torch_threads": threads,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="roro bench router-step", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--trajectories", type=int, default=512, help="trajectories per update of the default point")
    p.add_argument("--steps", type=int, default=16, help="routing steps per trajectory")
    p.add_argument("--features", type=int, default=32, help="router input features")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="router hidden widths")
    p.add_argument("--epochs", type=int, default=4, help="epochs per update")
    p.add_argument("--minibatches", type=int, default=4, help="minibatches per epoch")
    p.add_argument("--repeats", type=int, default=15, help="interleaved timed repeats per side (medians)")
    p.add_argument("--sweep", type=int, nargs="*", default=[1024, 4096, 8192, 16384],
                   help="routing-step counts for the batch-size sweep (trajectories = n / steps; none: no sweep)")
    p.add_argument("--mode", choices=("single", "shard_map", "pmap", "jit_sharded"), default="single",
                   help="parallel mode of the JAX update (parallel.mode)")
    p.add_argument("--devices", type=int, default=0, help="devices of a parallel mode (0 = all visible)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)

    import jax

    from roro_jax.benchmarking import annotate, machine, summary_line

    if args.mode != "single" and args.devices > jax.device_count():
        p.error(f"--devices {args.devices}: only {jax.device_count()} devices are visible (on CPU simulate more "
                f"with XLA_FLAGS=--xla_force_host_platform_device_count={args.devices})")
    start = machine()
    T, F = args.steps, args.features
    run = dict(hidden=args.hidden, epochs=args.epochs, minibatches=args.minibatches, repeats=args.repeats,
               mode=args.mode, devices=args.devices)
    default = measure(args.trajectories, T, F, **run)
    sweep = []
    for n in progress(args.sweep, "sweep"):
        if n == args.trajectories * T:
            sweep.append(default)
            continue
        sweep.append(measure(n // T, T, F, **run))
    peak = matmul_peak(args.trajectories, T, F, args.hidden, args.minibatches)
    for r in {id(r): r for r in [default, *sweep]}.values():
        r["matmul_share"] = r["jax_gflops"] / peak["xla_gflops"]
    n_dev = 1 if args.mode == "single" else (args.devices or jax.device_count())
    result = {
        "benchmark": "router_step", "ratio": default["ratio"], "matmul_share": default["matmul_share"],
        "default": default, "sweep": sweep, "matmul_peak": peak, "mode": args.mode, "devices": n_dev,
        "visible_devices": jax.device_count(),
        "backend": jax.default_backend(), "jax": jax.__version__, "cpus": os.cpu_count(),
        "config": {"F": F, "hidden": args.hidden, "epochs": args.epochs, "minibatches": args.minibatches},
    }
    annotate(result, start)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"router GRPO update, {args.epochs} epochs x {args.minibatches} minibatches, "
              f"MLP {F}->{'->'.join(map(str, args.hidden))}->2, backend={result['backend']}, "
              f"mode={args.mode} on {n_dev} device(s)")
        print(f"{'steps':>7} {'JAX steps/s':>12} {'torch steps/s':>14} {'ratio':>6} {'JAX GF/s':>9} {'torch GF/s':>10} "
              f"{'JAX/matmul':>10}")
        for r in sweep if default in sweep else [default, *sweep]:
            print(f"{r['routing_steps']:>7} {r['jax_steps_per_s']:>12.0f} {r['torch_steps_per_s']:>14.0f} "
                  f"{r['ratio']:>6.2f} {r['jax_gflops']:>9.1f} {r['torch_gflops']:>10.1f} {r['matmul_share']:>10.0%}")
        print(f"f32 matmul peak at {peak['shape']}: XLA {peak['xla_gflops']:.1f} GF/s, "
              f"torch {peak['torch_gflops']:.1f} GF/s; JAX/matmul = the update's GF/s over XLA's")
        print(summary_line(result))
    return result


if __name__ == "__main__":
    main()
