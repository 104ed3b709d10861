"""The live world's inputs: real models behind ``engines`` (vLLM servers through ``openai_server`` in real
use) and a shipped benchmark split into training and held-out problems. The stages are the same as the toy
world's (:mod:`pipelines.toy`, composed by :mod:`pipelines.roro`)."""

from __future__ import annotations

import numpy as np

from pipelines.toy import ToyEngines
from roro_jax.tasks.benchmarks import load_benchmark


def make_engines(cfg) -> ToyEngines:
    from roro_jax.engines import make_engine

    small, large = cfg.engines.small, cfg.engines.large
    for role, e in (("small", small), ("large", large)):
        if not e.model:
            raise ValueError(f"world=live needs engines.{role}.model (a served model name or a model folder)")
    return ToyEngines(make_engine(small.kind, **small.make_kwargs()), make_engine(large.kind, **large.make_kwargs()))


def _split(cfg):
    probs = load_benchmark(cfg.live.benchmark)
    perm = np.random.default_rng(cfg.live.split_seed).permutation(len(probs))
    k = int(round(cfg.live.train_frac * len(probs)))
    return [probs[i] for i in sorted(perm[:k])], [probs[i] for i in sorted(perm[k:])]


def train_problems(cfg) -> list:
    return _split(cfg)[0]


def test_problems(cfg) -> list:
    test = load_benchmark(cfg.live.test_benchmark) if cfg.live.test_benchmark else _split(cfg)[1]
    return test[:cfg.live.test_problems] if cfg.live.test_problems else test


def trajectory_meta(problem, steps) -> dict:
    """What the live world adds to a routed trajectory's meta."""
    return {"world": "live"}


def prompt_fn(cfg):
    template = cfg.live.prompt_template

    def fn(problem) -> str:
        return template.format(question=problem.question, id=problem.id, source=problem.source)

    return fn
