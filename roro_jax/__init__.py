"""roro_jax: rubric-guided process rewards + GRPO for stepwise model routing, in JAX."""

__version__ = "0.1.0"
