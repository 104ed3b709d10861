"""RouterMLP computes what a plain Flax MLP computes, values and gradients (its layers run on rows flattened to
[N, F] through a custom-VJP dense whose kernel gradient takes a CPU-specific path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from roro_jax.router.mlp import ACTIVATIONS, RouterMLP, action_logp_entropy, dense


def reference_logits(model: RouterMLP, x):
    """The same parameters through nnx.Linear / LayerNorm on the unflattened [..., F] input."""
    act = ACTIVATIONS[model.activation]
    for i, layer in enumerate(model.layers):
        x = layer(x)
        if model.norms is not None:
            x = model.norms[i](x)
        x = act(x)
    return model.head(x)


def loss(logits_fn, params, graphdef, x, actions, adv):
    logp, ent = action_logp_entropy(logits_fn(nnx.merge(graphdef, params), x), actions)
    return jnp.sum(logp * adv[:, None]) + 0.1 * jnp.sum(ent)


@pytest.mark.parametrize("layer_norm,activation", [(False, "tanh"), (True, "gelu")])
def test_values_and_gradients_match_plain_flax(layer_norm, activation):
    rng = np.random.default_rng(0)
    B, T, F = 6, 5, 7
    model = RouterMLP(F, (16, 12), activation, layer_norm, escalate_bias=-0.3, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    # a non-trivial head (its orthogonal init is scaled by 0.01)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    x = jnp.asarray(rng.standard_normal((B, T, F)), jnp.float32)
    actions = jnp.asarray(rng.integers(0, 2, (B, T)), jnp.int32)
    adv = jnp.asarray(rng.standard_normal(B), jnp.float32)

    got = nnx.merge(graphdef, params)(x)
    want = reference_logits(nnx.merge(graphdef, params), x)
    assert got.shape == (B, T, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    g_got = jax.jit(jax.grad(lambda p: loss(lambda m, v: m(v), p, graphdef, x, actions, adv)))(params)
    g_want = jax.jit(jax.grad(lambda p: loss(reference_logits, p, graphdef, x, actions, adv)))(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_got), jax.tree.leaves(g_want)):
        assert float(jnp.max(jnp.abs(b))) > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_single_feature_vector_and_empty_batch():
    model = RouterMLP(3, (4,), rngs=nnx.Rngs(0))
    assert model(jnp.ones(3)).shape == (2,)
    assert model(jnp.ones((0, 5, 3))).shape == (0, 5, 2)


def test_dense_gradients_equal_autodiff():
    rng = np.random.default_rng(2)
    x, w, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((9, 4), (4, 3), (3,)))
    g = jnp.asarray(rng.standard_normal((9, 3)), jnp.float32)
    got = jax.vjp(dense, x, w, b)[1](g)
    want = jax.vjp(lambda x, w, b: x @ w + b, x, w, b)[1](g)
    for a, c in zip(got, want):
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)
