"""Helpers for the rubric tests: tiny model spec and synthetic trajectories."""

from roro_jax.rubric.lm import LMSpec
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL, Step, Trajectory

TINY = LMSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position_embeddings=512)


def make_traj(qid, pid, confs, esc=(), correct=True):
    steps = [Step(index=i, text=f"s{i}", model=LARGE if i in esc else SMALL, action=ESCALATE if i in esc else KEEP,
                  confidence=c, prm_score=c, small_tokens=10, large_tokens=30 if i in esc else 0)
             for i, c in enumerate(confs)]
    return Trajectory(qid, 0, pid, steps, correct=correct)
