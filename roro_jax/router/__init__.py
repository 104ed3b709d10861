"""The router: the policy that decides, after each step the small model proposes, to keep it or escalate.

The names users call import from the package (``from roro_jax.router import RouterMLP, make_router``);
each is imported on first use (:mod:`roro_jax.lazy`), so ``import roro_jax.router`` stays cheap. ``__all__``
lists them. Modules:

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
- :mod:`~roro_jax.router.device_policies`: the policies as pure jittable functions (``to_device_policy``).

Training the router lives in :mod:`roro_jax.rl` (``RouterLearner``, the jitted GRPO update).
"""

from roro_jax.lazy import lazy_exports

_SUBMODULES = ("baselines", "device_policies", "exploration", "features", "mlp", "policies", "uniforms")
_EXPORTS = {
    **dict.fromkeys(("RouterMLP", "action_logp_entropy", "escalate_prob", "make_router"), "mlp"),
    **dict.fromkeys(("FEATURE_FAMILIES", "FeatureFamily", "get_family", "logprob_features", "prm_features",
                     "register_feature_family"), "features"),
    **dict.fromkeys(("ConstantPolicy", "Policy", "RouterPolicy", "StepObservation"), "policies"),
    **dict.fromkeys(("ConfidenceThreshold", "RandomPolicy", "SteerPolicy", "TrimThr", "confidence_sweep",
                     "fit_gmm2", "lrm_only", "random_sweep", "srm_only", "steer_sweep", "trim_thr_sweep"),
                    "baselines"),
    **dict.fromkeys(("AntiCritical", "CriticalFirst", "ExplorationConfig", "exploration_suite"), "exploration"),
    **dict.fromkeys(("DevicePolicy", "to_device_policy"), "device_policies"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
