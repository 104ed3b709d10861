import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.rl.advantages import group_advantages


def np_reference(r, G, scale="group", eps=1e-6, ddof=1):
    """Plain NumPy, loop over groups (written independently of the implementation)."""
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    finite_all = r[np.isfinite(r)]
    if scale == "batch":
        n = finite_all.size
        batch_std = np.std(finite_all, ddof=ddof) if n - ddof > 0 else 0.0
    for g in range(len(r) // G):
        seg = r[g * G:(g + 1) * G]
        ok = np.isfinite(seg)
        vals = seg[ok]
        if vals.size == 0 or vals.max() == vals.min():
            continue
        c = vals - vals.mean()
        if scale == "group":
            std = np.std(vals, ddof=ddof) if vals.size - ddof > 0 else 0.0
            c = c / (std + eps)
        elif scale == "batch":
            c = c / (batch_std + eps)
        res = np.zeros(G)
        res[ok] = c
        out[g * G:(g + 1) * G] = res
    return out


class TestGroupAdvantages(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_checked(self):
        f = self.variant(lambda r: group_advantages(r, 4, scale="group", eps=0.0, ddof=1))
        adv = np.asarray(f(jnp.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])))
        # group 1: mean .5, unbiased std sqrt(1/3) -> ±0.5/0.57735 = ±0.866025
        np.testing.assert_allclose(adv[:4], [0.8660254, -0.8660254, -0.8660254, 0.8660254], rtol=1e-6)
        np.testing.assert_array_equal(adv[4:], 0.0)  # identical rewards -> exactly 0

    @chex.variants(with_jit=True, without_jit=True)
    def test_against_numpy_reference(self):
        rng = np.random.default_rng(0)
        for scale in ("group", "batch", "none"):
            for ddof in (0, 1):
                r = rng.normal(size=48).astype(np.float32)
                r[[3, 17, 18]] = np.nan
                r[24:32] = 0.7  # a constant group
                f = self.variant(lambda x: group_advantages(x, 8, scale=scale, ddof=ddof))
                np.testing.assert_allclose(np.asarray(f(r)), np_reference(r, 8, scale, ddof=ddof),
                                           rtol=2e-5, atol=2e-6, err_msg=f"{scale} ddof={ddof}")

    def test_nan_does_not_poison_group(self):
        r = jnp.array([1.0, jnp.nan, 0.0, 1.0, jnp.inf, 0.0])
        adv = np.asarray(group_advantages(r, 3))
        assert np.all(np.isfinite(adv))
        assert adv[1] == 0.0 and adv[4] == 0.0
        assert adv[0] > 0 > adv[2]
        np.testing.assert_allclose(adv[:3], np_reference(np.asarray(r), 3)[:3], rtol=1e-5)

    def test_float_noise_constant_group_is_exactly_zero(self):
        # mean(0.1, 0.1, 0.1) != 0.1 in floating point; the result must still be exactly 0, not noise/eps
        adv = np.asarray(group_advantages(jnp.full(6, 0.1), 3))
        np.testing.assert_array_equal(adv, 0.0)

    def test_all_nan_group_and_single_valid(self):
        adv = np.asarray(group_advantages(jnp.array([jnp.nan, jnp.nan, 1.0, jnp.nan]), 2))
        np.testing.assert_array_equal(adv, 0.0)

    def test_group_major_order(self):
        r = jnp.array([0.0, 1.0, 10.0, 20.0])  # groups (0,1) and (10,20)
        adv = np.asarray(group_advantages(r, 2, scale="none"))
        np.testing.assert_allclose(adv, [-0.5, 0.5, -5.0, 5.0])

    def test_bad_input(self):
        with pytest.raises(ValueError, match="multiple of group_size"):
            group_advantages(jnp.ones(5), 2)
        with pytest.raises(ValueError, match="scale"):
            group_advantages(jnp.ones(4), 2, scale="nope")

    def test_jit_matches_eager(self):
        r = np.random.default_rng(1).normal(size=32).astype(np.float32)
        eager = group_advantages(r, 8)
        jitted = jax.jit(group_advantages, static_argnames=("group_size",))(r, group_size=8)
        np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_eps_is_added_to_the_std_and_group_size_one_is_allowed():
    """Mutation-testing gaps: ``eps`` is added to the std (group and batch scale); a group of one sample
    has advantage 0; a group size that is a float or a bool is refused."""
    import numpy as np
    import pytest

    from roro_jax.rl.advantages import group_advantages

    r = np.array([0.0, 2.0, 1.0, 5.0], np.float32)  # groups [0, 2] and [1, 5]: std sqrt(2) and sqrt(8)
    got = np.asarray(group_advantages(r, 2, eps=0.5))
    np.testing.assert_allclose(got, [-1 / (np.sqrt(2) + 0.5), 1 / (np.sqrt(2) + 0.5),
                                     -2 / (np.sqrt(8) + 0.5), 2 / (np.sqrt(8) + 0.5)], rtol=1e-6)
    batch_std = np.std(r, ddof=1)
    got = np.asarray(group_advantages(r, 2, scale="batch", eps=0.5))
    np.testing.assert_allclose(got, np.array([-1, 1, -2, 2]) / (batch_std + 0.5), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(group_advantages(r, 1)), np.zeros(4))
    for bad in (2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            group_advantages(r, bad)


def test_a_single_reward_is_one_group_of_one():
    import numpy as np

    from roro_jax.rl.advantages import group_advantages

    np.testing.assert_array_equal(np.asarray(group_advantages(np.array([0.7], np.float32), 1)), [0.0])
