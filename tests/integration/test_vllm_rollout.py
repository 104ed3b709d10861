"""Routing rollouts end to end on vLLM-served toy models.

The small and large models are served by two real vLLM servers; ``roro_jax.rollout`` routes with
constant policies. The crash/resume of a collection (the small model's server SIGKILLed mid-collection,
restarted, the collection resumed to a complete store), injected server faults and a 256-trajectory
load test are in test_vllm_faults.py, which reuses this file's helpers.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from roro_jax.rollout import RolloutConfig, rollout
from roro_jax.router.policies import ConstantPolicy
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL

pytestmark = pytest.mark.integration


class SeededRandomPolicy:
    """Escalate with probability ``p``, drawn from each row's seed (batch-invariant)."""

    batch_invariant = True

    def __init__(self, p: float, policy_id: str):
        self.p, self.policy_id = p, policy_id

    def act(self, obs, rng):
        seeds = obs.row_seeds if obs.row_seeds is not None else rng.integers(0, 2**31, len(obs))
        u = np.array([np.random.default_rng(int(s)).random() for s in seeds])
        a = (u < self.p).astype(np.int32)
        logp = np.where(a == ESCALATE, np.log(self.p), np.log1p(-self.p)).astype(np.float32)
        return a, logp


def toy_problems(n: int):
    from roro_jax.tasks import toy

    try:
        from roro_jax.worlds.toy import toy_heldout

        return toy_heldout(n)
    except (ImportError, FileNotFoundError):
        return toy.generate(n, seed=0, split="test")


def prompt_fn(problem):
    from roro_jax.tasks import toy

    return toy.prompt_text(problem)


CFG = RolloutConfig(max_steps=6, max_step_tokens=24, logprobs=5, max_live=8, temperature=1.0)


def check_trajectory(t, cfg=CFG):
    assert 1 <= len(t.steps) <= cfg.max_steps
    for i, s in enumerate(t.steps):
        assert s.index == i and s.small_tokens >= 1
        if s.action == ESCALATE:
            assert s.model == LARGE and s.large_tokens >= 1 and s.small_text is not None
        else:
            assert s.action == KEEP and s.model == SMALL and s.large_tokens == 0
    assert t.large_tokens == sum(s.large_tokens for s in t.steps)
    assert t.small_tokens == sum(s.small_tokens for s in t.steps)


def test_constant_policies_end_to_end(engine_for, report):
    problems = toy_problems(4)
    out = {}
    for action, pid in ((KEEP, "srm-only"), (ESCALATE, "lrm-only")):
        small, large = engine_for("small"), engine_for("large")

        async def go():
            try:
                return await rollout(problems, small, large, ConstantPolicy(action, policy_id=pid), CFG,
                                     group_size=2, seed=0, prompt_fn=prompt_fn)
            finally:
                await small.aclose()
                await large.aclose()

        out[pid] = asyncio.run(go())
    for t in out["srm-only"]:
        check_trajectory(t)
        assert t.large_tokens == 0 and t.n_escalations == 0
    for t in out["lrm-only"]:
        check_trajectory(t)
        assert t.n_escalations == len(t.steps) and t.large_tokens > 0
    report["rollout_constant_policies"] = {k: {"trajectories": len(v), "steps": sum(len(t.steps) for t in v)}
                                           for k, v in out.items()}
