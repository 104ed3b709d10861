"""A GSPO-style policy loss: one importance ratio per sequence (the geometric mean of its token ratios),
clipped per sequence, averaged over sequences. Registered as ``gspo``; pick it with ``grpo.loss=gspo``:

    roro router -c configs/router_synthetic.yaml --plugin examples/gspo_loss.py grpo.loss=gspo grpo.clip_eps=0.05
"""
import jax.numpy as jnp

from roro_jax.rl import register_policy_loss


@register_policy_loss("gspo")
def gspo(logp, batch, hp):
    """``logp`` [B, T] under the parameters being trained; ``batch`` old_logp / mask [B, T], advantages [B];
    ``hp`` the numbers from the train state. Returns additive sums, so every parallel mode is exact."""
    mask = batch["mask"]
    tokens = mask.sum(-1)
    valid = (tokens > 0).astype(logp.dtype)
    ratio = jnp.exp(((logp - batch["old_logp"]) * mask).sum(-1) / jnp.maximum(tokens, 1.0))  # [B]
    clipped = jnp.clip(ratio, 1.0 - hp["clip_eps"], 1.0 + hp["clip_eps_high"])
    adv = batch["advantages"]
    per_seq = jnp.maximum(-adv * ratio, -adv * clipped)
    return {"loss_sum": (per_seq * valid).sum(), "loss_den": valid.sum(),  # the loss: a mean over sequences
            "seq_ratio_sum": (ratio * valid).sum(), "clip_frac_sum": ((ratio != clipped) * valid).sum()}
