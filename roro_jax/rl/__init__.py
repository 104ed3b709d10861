"""Reinforcement learning for the router (and the LM parts that reuse it): rewards, advantages, losses,
the jitted update, the training loop, checkpoints and the run folder. Nothing here knows about text.

The names users call import from the package (``from roro_jax.rl import make_update, register_reward``);
each is imported on first use (:mod:`roro_jax.lazy`), so ``import roro_jax.rl`` imports no JAX. ``__all__``
lists them. Modules:

- :mod:`~roro_jax.rl.rewards`: the reward-term registry (``outcome``, ``cost``, ``process``,
  ``escalations``; ``register_reward``) and ``compute_rewards`` (``sum_then_normalize`` /
  ``normalize_then_sum``).
- :mod:`~roro_jax.rl.advantages`: ``group_advantages(rewards, group_size, *, scale, eps, ddof)``
  (GRPO's group-normalised advantages; NaN rewards give 0), ``rloo_advantages`` (leave-one-out), the
  advantage-estimator registry (``group``, ``batch``, ``none``, ``rloo``; ``register_advantage``).
- :mod:`~roro_jax.rl.losses`: ``policy_loss`` (clipped ratio, asymmetric clip, k1/k2/k3/exact KL, three
  aggregations), ``bernoulli_kl``, ``bernoulli_entropy``, ``bradley_terry_loss``, the KL registry
  (``register_kl``) and the policy-loss registry (``grpo``; ``register_policy_loss``, ``grpo.loss``).
- :mod:`~roro_jax.rl.reference`: the KL term's reference policy (``grpo.reference``: ``init``, the
  initial router frozen, or ``none``; ``register_reference``), carried in ``TrainState.ref_params``.
- :mod:`~roro_jax.rl.update`: ``make_update(loss_terms_fn, tx, ...)``: the one jitted
  ``update(state, batch, rng)`` running epochs × minibatches in ``lax.scan`` with donated state, in the
  ``single``, ``shard_map``, ``pmap`` and ``jit_sharded`` modes, hyperparameters as data
  (``make_optimizer``: ``optax.inject_hyperparams``; ``TrainState.hparams``); the router's instance
  ``make_router_update``; ``validate_batch``.
- :mod:`~roro_jax.rl.trainer`: ``RouterLearner`` (graph, state, update, checkpoints) and ``run_training``,
  the online GRPO loop every world shares.
- :mod:`~roro_jax.rl.checkpoint`: orbax checkpoints (every k, keep N, atomic, SHA-256 verified, fallback
  to an older step, a clear error when shapes do not fit).
- :mod:`~roro_jax.rl.run_dir`: the run folder's saved ``config.yaml`` and which keys a resume may change.
- :mod:`~roro_jax.rl.metrics_log`: ``metrics.jsonl`` rows and the optional TensorBoard writer.
- :mod:`~roro_jax.rl.stream`: training over a trajectory store of any size, group by group.
"""

from roro_jax.lazy import lazy_exports

_SUBMODULES = ("advantages", "checkpoint", "losses", "metrics_log", "reference", "rewards", "run_dir", "stream",
               "trainer", "update")
_EXPORTS = {
    **dict.fromkeys(("REWARD_TERMS", "combine_rewards", "compute_rewards", "register_reward", "reward_needs",
                     "reward_terms"), "rewards"),
    # (the estimator dispatch ``advantages`` stays in its module: the name is the submodule's)
    **dict.fromkeys(("ADVANTAGE_ESTIMATORS", "group_advantages", "register_advantage", "rloo_advantages"),
                    "advantages"),
    **dict.fromkeys(("KL_ESTIMATORS", "POLICY_LOSSES", "bernoulli_entropy", "bernoulli_kl", "bradley_terry_loss",
                     "policy_loss", "policy_loss_terms", "register_kl", "register_policy_loss"), "losses"),
    **dict.fromkeys(("REFERENCES", "reference_params", "register_reference"), "reference"),
    **dict.fromkeys(("MODES", "TrainState", "init_state", "make_optimizer", "make_router_update", "make_update",
                     "router_loss_terms", "set_hyperparams", "validate_batch"), "update"),
    **dict.fromkeys(("RouterLearner", "make_mesh", "run_training"), "trainer"),
    **dict.fromkeys(("CheckpointFallbackWarning", "CheckpointMismatchError", "CheckpointRestoreError",
                     "Checkpointer"), "checkpoint"),
    "MetricsLog": "metrics_log",
    **dict.fromkeys(("iter_batches", "iter_groups", "train_on_store"), "stream"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
