"""A KL estimator of one's own, selected by config: Schulman's k3 with the log-ratio clamped to [-5, 5], so
a rare action whose probability collapsed cannot blow the KL term up. Loaded by the config's ``plugins``
list, then picked with ``grpo.kl``:

    roro router -c configs/router_synthetic.yaml plugins=[examples/kl_estimator.py] grpo.kl=k3_clamped \
        grpo.beta=0.1

(or ``plugins: [examples/kl_estimator.py]`` and ``grpo: {kl: k3_clamped, beta: 0.1}`` in a YAML config).
The metrics log then has ``kl_ref``, the estimate's token mean, KL to the frozen initial router.
"""
import jax.numpy as jnp

from roro_jax.rl import register_kl


@register_kl("k3_clamped")
def k3_clamped(logp, ref_logp):
    """Per-position estimate of KL(pi || pi_ref) from the taken actions' log-probs, [B, T]."""
    log_r = jnp.clip(ref_logp - logp, -5.0, 5.0)
    return jnp.exp(log_r) - log_r - 1.0
