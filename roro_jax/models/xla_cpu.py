"""XLA:CPU compiler options for long-sequence LM passes, given per computation, never process-wide.

jaxlib 0.10's XLA:CPU lowers dots through YNNPACK fusions by default. On the AVX-512 Xeon this project is
measured on, XLA's own (Eigen) dots are faster for the long-sequence GEMMs of scoring, e.g.
[4096, 576] x [576, 960]: 172 vs 113 GFLOP/s, and a whole SmolLM2-135M scoring pass of 8 x 512 tokens
took 8.5 s instead of 10.1 s (same process, interleaved); for the M = 8 GEMMs of token-by-token decoding
YNNPACK is the faster one (90 vs 100 ms per step). So only jitted scoring passes opt in::

    score = jax.jit(fn, compiler_options=long_sequence_options())

The figures and commands are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_LONG_SEQUENCE = {"xla_cpu_experimental_ynn_fusion_type": ""}  # no YNNPACK fusions: XLA's own dots


@functools.cache
def long_sequence_options() -> dict | None:
    """Options for ``jax.jit(..., compiler_options=...)`` of a scoring pass over long sequences.

    ``None`` (XLA's defaults) off the CPU backend, or when this jaxlib does not know the options.
    """
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x @ x, compiler_options=_LONG_SEQUENCE)(jnp.ones((2, 2))).block_until_ready()
    except Exception:  # noqa: BLE001 - an XLA that renamed or dropped the option: keep its defaults
        return None
    return dict(_LONG_SEQUENCE)
