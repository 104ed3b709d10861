"""REINFORCE with an RLOO baseline: the plain score-function loss ``-A * log pi`` (no ratio, no clip), with
each trajectory's advantage its reward minus the mean of the other G-1 rewards of its group (the registered
``rloo`` estimator). On-policy, so one optimiser step per update:

    roro router -c configs/router_synthetic.yaml --plugin examples/reinforce_rloo.py grpo.loss=reinforce \
        grpo.adv_scale=rloo grpo.epochs=1 grpo.minibatches=1
"""
from roro_jax.rl import register_policy_loss


@register_policy_loss("reinforce")
def reinforce(logp, batch, hp):
    mask = batch["mask"]
    per_seq = -(batch["advantages"][:, None] * logp * mask).sum(-1)  # the trajectory's log-prob, weighted
    valid = (mask.sum(-1) > 0).astype(logp.dtype)
    return {"loss_sum": per_seq.sum(), "loss_den": valid.sum(),  # a mean over trajectories
            "logp_sum": ((logp * mask).sum(-1)).sum()}
