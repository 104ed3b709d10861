"""A reward term of one's own, used from the command line through a plugin: ``brevity`` rewards short
trajectories (fewer generated tokens, small and large model together). Weight it like a built-in term:

    roro router -c configs/router_synthetic.yaml --plugin examples/brevity_reward.py reward.weights.brevity=0.1

The metrics log then has a ``reward/brevity`` column. ``needs`` names the reward-batch fields it reads
(``roro_jax.worlds.reward_fields``), so a world without them fails at config time, naming the term.
"""
from roro_jax.rl import register_reward


@register_reward("brevity", needs=("small_tokens", "large_tokens"))
def brevity(batch):
    """``batch``: a dict of [N] arrays, one entry per trajectory; returns [N] rewards."""
    return -(batch["small_tokens"] + batch["large_tokens"]) / 100.0
