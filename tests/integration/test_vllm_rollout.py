"""Routing rollouts end to end on vLLM-served toy models, and crash/resume of a collection.

The small and large models are served by two real vLLM servers; ``roro_jax.rollout`` routes with a
seeded random policy and writes every finished trajectory to a ``TrajectoryStore``. In the resume test
the small model's server is SIGKILLed mid-collection; the collection fails with the engine's error, the
server is restarted, and the same collection resumes to a complete store: every expected key exactly
once, none missing.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from roro_jax.engines.openai_server import EngineError
from roro_jax.rollout import RolloutConfig, rollout
from roro_jax.router.policies import ConstantPolicy
from roro_jax.store import TrajectoryStore, key_of
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


def test_kill_server_mid_collection_then_resume(servers, engine_for, tmp_path, report):
    problems = toy_problems(12)
    G = 3
    policy = SeededRandomPolicy(0.3, "rand-0.3")
    expected = {(str(p.id), g, policy.policy_id) for p in problems for g in range(G)}
    path = tmp_path / "trajectories.jsonl"
    store = TrajectoryStore(path)

    def engines():
        kw = dict(max_retries=2, backoff=0.2, timeout=30.0)
        return engine_for("small", **kw), engine_for("large", **kw)

    async def interrupted():
        small, large = engines()
        task = asyncio.ensure_future(rollout(problems, small, large, policy, CFG, group_size=G, seed=0,
                                             store=store, prompt_fn=prompt_fn))
        t0 = time.time()
        while len(store) < 3 and not task.done() and time.time() - t0 < 300:
            await asyncio.sleep(0.02)
        assert not task.done(), "the collection finished before the server could be killed"
        await asyncio.to_thread(servers["small"].kill)  # SIGKILL the whole server process group
        with pytest.raises(EngineError) as ei:
            await task
        await small.aclose()
        await large.aclose()
        return ei.value

    err = asyncio.run(interrupted())
    assert servers["small"].url.rsplit("/", 1)[0] in str(err)  # the error names the dead endpoint
    n_before = len(TrajectoryStore(path))
    assert 0 < n_before < len(expected)

    t0 = time.time()
    servers["small"].start(timeout=600)
    restart_s = time.time() - t0

    async def resumed():
        small, large = engines()
        try:
            return await rollout(problems, small, large, policy, CFG, group_size=G, seed=0, store=store,
                                 prompt_fn=prompt_fn)
        finally:
            await small.aclose()
            await large.aclose()

    new = asyncio.run(resumed())
    assert len(new) == len(expected) - n_before  # stored ones were skipped, the rest collected
    keys = [key_of(json.loads(line)) for line in open(path)]
    assert len(keys) == len(set(keys)), "duplicate trajectories in the store"
    assert set(keys) == expected, "missing trajectories"
    assert TrajectoryStore(path).missing(expected) == []
    trajs = list(TrajectoryStore(path).iter())
    for t in trajs:
        check_trajectory(t)
    esc = sum(t.n_escalations for t in trajs) / max(1, sum(len(t.steps) for t in trajs))
    report["resume_after_kill"] = {"expected": len(expected), "stored_before_kill": n_before,
                                   "collected_after_restart": len(new), "duplicates": 0, "missing": 0,
                                   "escalation_rate": round(esc, 3), "restart_seconds": round(restart_s, 1),
                                   "error": f"{type(err).__name__}: {str(err)[:160]}"}
