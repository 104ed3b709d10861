"""Tasks: benchmark loaders, answer grading, and the toy arithmetic world.

- :func:`load_benchmark` reads a benchmark JSONL file (or a shipped one by name) into :class:`Problem`s.
- :func:`grade` / :func:`extract_answer` decide whether a model's text has the gold final answer.
- :mod:`roro_jax.tasks.toy` generates the toy world's problems, checks solutions step by step and
  builds its character-level tokenizer.
"""

from roro_jax.tasks.benchmarks import (BENCHMARK_FILES, BenchmarkFormatError, available_benchmarks,
                                       load_benchmark, resolve_benchmark)
from roro_jax.tasks.grading import (answers_match, extract_answer, grade, grade_many, last_boxed,
                                    math_equal, normalize_answer)
from roro_jax.tasks.problem import Problem

__all__ = [
    "BENCHMARK_FILES", "BenchmarkFormatError", "Problem", "answers_match", "available_benchmarks",
    "extract_answer", "grade", "grade_many", "last_boxed", "load_benchmark", "math_equal",
    "normalize_answer", "resolve_benchmark",
]
