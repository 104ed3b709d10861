"""The router: the policy that decides, after each step the small model proposes, to keep it or escalate.

Modules (import what you need; nothing is re-exported here, so importing the package is cheap):

- :mod:`~roro_jax.router.mlp`: :class:`~roro_jax.router.mlp.RouterMLP` (features ``[..., F]`` -> logits
  ``[..., 2]``, keep / escalate), ``make_router(cfg.router, in_features)``, ``action_logp_entropy``,
  ``escalate_prob``.
- :mod:`~roro_jax.router.features`: the feature-family registry (``logprob`` for RoRo, ``prm`` for
  TRIM-Agg; ``register_feature_family``, ``get_family``), pure vectorised functions of a step's
  log-probabilities or PRM scores plus routing context.
- :mod:`~roro_jax.router.policies`: the ``Policy`` protocol every router and baseline implements
  (``StepObservation`` in, actions and their log-probabilities out) and ``RouterPolicy``, the learned
  router as a policy.
- :mod:`~roro_jax.router.baselines`: SRM-only, LRM-only, random escalation, confidence threshold,
  TRIM-Thr and STEER (a 2-component Gaussian mixture over step confidence).
- :mod:`~roro_jax.router.exploration`: the exploratory policies of stage 1 (rate and threshold sweeps,
  critical-first and anti-critical controls) whose trajectories become preference pairs.

Training the router lives in :mod:`roro_jax.rl` (``RouterLearner``, the jitted GRPO update).
"""
