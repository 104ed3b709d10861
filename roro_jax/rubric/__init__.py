"""Rubrics, the Judge (rubric-conditioned reward model), the Rubricor (rubric generator), the alternating
loop with its statistical validation gate (RoRo stage 2, DESIGN.md §1).

Router trainers read the process reward with :func:`score_trajectories` (scores in [0, 1]).
"""

from roro_jax.rubric.format import ParseResult, RubricLimits, format_rubric, parse_rubric, prune_rubric
from roro_jax.rubric.gate import GateConfig, GateDecision, GateLog, gated_phase, mcnemar_gate
from roro_jax.rubric.judge import Judge, JudgeConfig, pair_correct, score_trajectories
from roro_jax.rubric.lm import LMSpec
from roro_jax.rubric.loop import RubricConfig, make_data, run_alternating, run_no_rubric
from roro_jax.rubric.rubricor import Rubricor, RubricorConfig, rubric_reward
from roro_jax.rubric.serialize import SerializeConfig, query_summary, serialize_trajectory
from roro_jax.rubric.teacher import teacher_rubric

__all__ = [
    "GateConfig", "GateDecision", "GateLog", "Judge", "JudgeConfig", "LMSpec", "ParseResult", "RubricConfig",
    "RubricLimits", "Rubricor", "RubricorConfig", "SerializeConfig", "format_rubric", "gated_phase", "make_data",
    "mcnemar_gate", "pair_correct", "parse_rubric", "prune_rubric", "query_summary", "rubric_reward",
    "run_alternating", "run_no_rubric", "score_trajectories", "serialize_trajectory", "teacher_rubric",
]
