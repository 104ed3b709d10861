import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.rl import rewards as R
from roro_jax.rl.advantages import group_advantages


def batch():
    return {"correct": jnp.array([1.0, 0.0, 1.0, 1.0]), "large_share": jnp.array([0.5, 0.0, 0.2, 0.8]),
            "process": jnp.array([0.9, 0.1, 0.4, 0.6])}


def test_roro_reward_by_hand():
    w = {"outcome": 1.0, "process": 0.5, "cost": 0.3}
    r, terms = R.compute_rewards(batch(), w)
    # R = 1[correct] + 0.5 * process - 0.3 * share
    np.testing.assert_allclose(np.asarray(r), [1 + 0.45 - 0.15, 0 + 0.05 - 0.0, 1 + 0.2 - 0.06, 1 + 0.3 - 0.24],
                               rtol=1e-6)
    assert set(terms) == {"outcome", "process", "cost"}


def test_zero_weight_terms_are_not_evaluated():
    b = batch()
    del b["process"]  # would raise if evaluated
    r, terms = R.compute_rewards(b, {"outcome": 1.0, "cost": 0.3, "process": 0.0})
    assert "process" not in terms
    np.testing.assert_allclose(np.asarray(r), [0.85, 0.0, 0.94, 0.76], rtol=1e-6)


def test_normalize_then_sum_by_hand():
    w = {"outcome": 1.0, "cost": 2.0}
    r, _ = R.compute_rewards(batch(), w, mode="normalize_then_sum", group_size=2)
    z_out = np.asarray(group_advantages(batch()["correct"], 2))
    z_cost = np.asarray(group_advantages(-batch()["large_share"], 2))
    np.testing.assert_allclose(np.asarray(r), z_out + 2 * z_cost, rtol=1e-5)
    # group 2 has identical outcomes: only the cost term moves it
    assert z_out[2] == z_out[3] == 0.0


def test_user_term_registered_without_touching_trainer():
    @R.register_reward("brevity_test")
    def brevity(b):
        return -jnp.asarray(b["small_tokens"], jnp.float32) / 100.0

    try:
        b = {**batch(), "small_tokens": jnp.array([100, 200, 0, 50])}
        r, terms = R.compute_rewards(b, {"outcome": 1.0, "brevity_test": 1.0})
        np.testing.assert_allclose(np.asarray(r), [0.0, -2.0, 1.0, 0.5], rtol=1e-6)
    finally:
        R.REWARD_TERMS.pop("brevity_test")


def test_terms_declare_the_fields_they_read():
    assert R.reward_needs("outcome") == ("correct",) and R.reward_needs("cost") == ("large_share",)
    assert R.reward_needs("process") == ("process",) and R.reward_needs("escalations") == ("escalation_rate",)
    R.register_reward("needs_test", needs="seconds")(lambda b: -b["seconds"])
    try:
        assert R.reward_needs("needs_test") == ("seconds",)
    finally:
        R.REWARD_TERMS.pop("needs_test")
    with pytest.raises(KeyError, match="unknown reward term 'needs_test'"):
        R.reward_needs("needs_test")


def test_errors():
    with pytest.raises(KeyError, match=r"unknown reward term 'nope'; registered: \['cost', 'escalations', "
                                       r"'outcome', 'process'"):
        R.compute_rewards(batch(), {"nope": 1.0})
    with pytest.raises(KeyError, match="needs batch field 'process'"):
        R.compute_rewards({"correct": jnp.ones(2)}, {"process": 1.0})
    with pytest.raises(ValueError, match="group_size"):
        R.compute_rewards(batch(), {"outcome": 1.0}, mode="normalize_then_sum")
    with pytest.raises(ValueError, match="combine mode"):
        R.compute_rewards(batch(), {"outcome": 1.0}, mode="avg")


def test_nan_outcome_propagates_to_reward_and_zero_advantage():
    b = {**batch(), "correct": jnp.array([1.0, jnp.nan, 1.0, 0.0])}
    r, _ = R.compute_rewards(b, {"outcome": 1.0, "cost": 0.3})
    assert np.isnan(np.asarray(r)[1])
    adv = np.asarray(group_advantages(r, 2))
    assert adv[1] == 0.0 and adv[0] == 0.0  # the group has one finite reward left
    assert adv[2] > 0 > adv[3]


def test_escalations_term_inf_message_jit_and_normalising_eps():
    """Mutation-testing gaps: the ``escalations`` term, the first infinite entry named, the terms jittable,
    and ``normalize_then_sum`` dividing by std + eps exactly."""
    import jax

    from roro_jax.rl.rewards import compute_rewards

    rate = np.array([0.0, 0.5, 0.25, 1.0], np.float32)
    r, terms = compute_rewards({"escalation_rate": rate}, {"escalations": 2.0})
    np.testing.assert_allclose(np.asarray(r), -2.0 * rate)
    np.testing.assert_allclose(np.asarray(terms["escalations"]), -rate)
    with pytest.raises(ValueError, match=r"'cost' is -inf at index 1 \(2 infinite entries\)"):
        compute_rewards({"large_share": np.array([0.1, np.inf, 0.2, -np.inf])}, {"cost": 1.0})
    jitted = jax.jit(lambda b: compute_rewards(b, {"escalations": 1.0})[0])  # tracers skip the value check
    np.testing.assert_allclose(np.asarray(jitted({"escalation_rate": rate})), -rate)
    out, _ = compute_rewards({"correct": np.array([0.0, 2.0, 5.0, 5.0])}, {"outcome": 1.0},
                             mode="normalize_then_sum", group_size=2)
    d = 1.0 / (np.sqrt(2.0) + 1e-6)  # group [0, 2]: mean 1, std sqrt(2) (ddof 1); group [5, 5]: constant
    np.testing.assert_allclose(np.asarray(out), [-d, d, 0.0, 0.0], rtol=1e-6)
