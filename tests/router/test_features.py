import chex
import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.router.features import FEATURE_FAMILIES, LOGPROB_NAMES, get_family, logprob_features, prm_features


def np_logprob_features(topk, chosen, mask, step_index, large_so_far, esc_so_far, max_steps=30, max_tok=256):
    """Per-step loop reference for a single step."""
    m = mask > 0
    c = np.maximum(chosen[m], -30.0)
    p = np.exp(topk[m])
    q = p / p.sum(-1, keepdims=True)
    ent = -(q * np.log(q)).sum(-1)
    s = np.sort(p, -1)[:, ::-1]
    margin = s[:, 0] - s[:, 1]
    cp = np.exp(c)
    return np.array([
        cp.mean(), cp.min(), c.mean(), c.min(), c.std(), ent.mean(), ent.max(), margin.mean(), margin.min(),
        (cp < 0.5).mean(), s[:, 0].mean(), (c < np.log(s[:, 0]) - 1e-4).mean(),
        step_index / max_steps, m.sum() / max_tok, large_so_far / 1000.0, esc_so_far / max(step_index, 1),
    ])


class TestLogprob(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_against_loop_reference(self):
        rng = np.random.default_rng(0)
        S, L, k = 4, 9, 5
        topk = np.log(rng.dirichlet(np.ones(k) * 0.5, size=(S, L)))
        pick = rng.integers(0, k, (S, L))
        chosen = np.take_along_axis(topk, pick[..., None], -1)[..., 0]
        mask = np.ones((S, L))
        mask[1, 5:] = 0
        mask[3, 2:] = 0
        idx = np.arange(S)
        f = self.variant(lambda a, b, c, d: logprob_features(a, b, c, step_index=d, large_tokens_so_far=d * 10,
                                                             escalations_so_far=d // 2))
        got = np.asarray(f(topk, chosen, mask, idx))
        assert got.shape == (S, len(LOGPROB_NAMES))
        for s in range(S):
            want = np_logprob_features(topk[s], chosen[s], mask[s], s, s * 10, s // 2)
            np.testing.assert_allclose(got[s], want, rtol=1e-4, atol=1e-5, err_msg=f"step {s}")

    def test_confident_step_scores_higher_than_unsure(self):
        k = 5
        sure = np.log(np.array([[0.96, 0.01, 0.01, 0.01, 0.01]] * 6))
        unsure = np.log(np.array([[0.3, 0.25, 0.2, 0.15, 0.1]] * 6))
        f = np.asarray(logprob_features(np.stack([sure, unsure]), np.stack([sure[:, 0], unsure[:, 0]]),
                                        np.ones((2, 6))))
        i = {n: j for j, n in enumerate(LOGPROB_NAMES)}
        assert f[0, i["mean_chosen_prob"]] > f[1, i["mean_chosen_prob"]]
        assert f[0, i["mean_entropy"]] < f[1, i["mean_entropy"]]
        assert f[1, i["low_conf_share"]] == 1.0 and f[0, i["low_conf_share"]] == 0.0

    def test_empty_step_is_finite(self):
        f = np.asarray(logprob_features(np.zeros((1, 3, 4)) - np.inf, np.zeros((1, 3)), np.zeros((1, 3))))
        assert np.all(np.isfinite(f))


def test_prm_family_by_hand():
    f = np.asarray(prm_features(jnp.array([0.9, 0.5, 0.8]), jnp.array([30, 60, 300])))
    np.testing.assert_allclose(f, [[0.9, 1.0, 1.0, 0.1, 0.0],
                                   [0.5, 0.9, 0.9, 0.2, 1 / 30],
                                   [0.8, 0.5, 0.45, 1.0, 2 / 30]], rtol=1e-6)
    masked = np.asarray(prm_features(jnp.array([[0.9, 0.5]]), jnp.array([[3, 4]]), jnp.array([[1, 0]])))
    assert np.all(masked[0, 1] == 0)


def test_registry():
    assert set(FEATURE_FAMILIES) >= {"logprob", "prm"}
    assert get_family("prm").dim == 5 and get_family("logprob").dim == len(LOGPROB_NAMES)
    with pytest.raises(KeyError, match="unknown feature family"):
        get_family("nope")
