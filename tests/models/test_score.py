"""token_logprobs vs PyTorch, ScoreModel, LoRA adapters, and training with optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from roro_jax.models import DecoderConfig, from_pretrained, init_model
from roro_jax.models.lora import add_lora, merge_lora
from roro_jax.models.score import ScoreModel, last_token_positions, token_logprobs

from lm_testkit import jitted_logits, padded_batch

TINY = DecoderConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, model_type="llama")


def test_token_logprobs_match_torch(hf_folder):
    folder, ref = hf_folder("qwen2")
    model, _ = from_pretrained(folder)
    ids, mask = padded_batch(np.random.RandomState(0), model.config.vocab_size, [12, 5, 9], "left")
    score = nnx.jit(token_logprobs, static_argnames=("chunk",))
    got = np.asarray(score(model, jnp.asarray(ids), jnp.asarray(mask), chunk=4))
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        logits = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits
        want = torch.log_softmax(logits, -1)[:, :-1].gather(-1, torch.tensor(ids)[:, 1:, None])[..., 0].numpy()
    scored = (mask[:, 1:] == 1) & (mask[:, :-1] == 1)  # left padding: a real token after a real token
    np.testing.assert_allclose(got[:, 1:][scored], want[scored], atol=1e-4)
    assert np.all(got[:, 1:][~scored] == 0) and np.all(got[:, 0] == 0)
    np.testing.assert_allclose(np.asarray(score(model, jnp.asarray(ids), jnp.asarray(mask), chunk=128)), got,
                               atol=1e-5)


def test_long_sequence_options_compile_the_same_scores(hf_folder, monkeypatch):
    from roro_jax.models import xla_cpu

    model, _ = from_pretrained(hf_folder("llama")[0])
    opts = xla_cpu.long_sequence_options()
    assert opts == {"xla_cpu_experimental_ynn_fusion_type": ""}  # the tests run on the CPU backend
    ids, mask = padded_batch(np.random.RandomState(2), model.config.vocab_size, [40, 17, 33], "right")
    graphdef, state = nnx.split(model)
    fn = lambda st, i, m: token_logprobs(nnx.merge(graphdef, st), i, m)  # noqa: E731
    tuned = jax.jit(fn, compiler_options=opts)(state, jnp.asarray(ids), jnp.asarray(mask))
    default = jax.jit(fn)(state, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(tuned), np.asarray(default), atol=1e-5)
    # an XLA that does not know the option: XLA's defaults instead of a compile error
    monkeypatch.setattr(xla_cpu, "_LONG_SEQUENCE", {"xla_cpu_no_such_option_for_this_test": ""})
    xla_cpu.long_sequence_options.cache_clear()
    try:
        assert xla_cpu.long_sequence_options() is None
    finally:
        xla_cpu.long_sequence_options.cache_clear()


def test_last_token_positions():
    mask = jnp.array([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(last_token_positions(mask), [[3], [2], [0]])


def test_score_model_reads_chosen_positions():
    model = init_model(TINY, seed=0)
    scorer = ScoreModel(model, num_outputs=3, rngs=nnx.Rngs(1), init_std=0.1)
    ids, mask = padded_batch(np.random.RandomState(1), TINY.vocab_size, [7, 4], "right")
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    positions = jnp.array([[6, 2], [3, 0]])
    out = nnx.jit(lambda s, i, m, p: s(i, m, p))(scorer, ids, mask, positions)
    assert out.shape == (2, 2, 3)
    hidden = nnx.jit(lambda m, i, a: m.hidden_states(i, a))(model, ids, mask)
    want = jnp.take_along_axis(hidden, positions[..., None], axis=1) @ scorer.head_kernel[...] + scorer.head_bias[...]
    np.testing.assert_allclose(out, want, atol=1e-5)
    last = nnx.jit(lambda s, i, m: s(i, m))(scorer, ids, mask)
    np.testing.assert_allclose(last[:, 0], jnp.stack([out[0, 0], out[1, 0]]), atol=1e-5)  # last real tokens 6, 3


def _loss(model, ids):
    return -token_logprobs(model, ids).mean()


def test_lora_starts_neutral_trains_only_adapters_and_merges():
    model = init_model(TINY, seed=2)
    ids = jnp.asarray(np.random.RandomState(2).randint(0, TINY.vocab_size, (4, 12)))
    before = jitted_logits(model, ids)
    assert add_lora(model, rank=4, alpha=8, rngs=nnx.Rngs(3)) == 2 * 7
    np.testing.assert_allclose(jitted_logits(model, ids), before, atol=1e-6)
    base_kernel = np.asarray(model.layers[0].attn.q_proj.kernel[...])
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.LoRAParam)

    @nnx.jit
    def step(model, opt, ids):
        loss, grads = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, ids)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, ids)) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.1
    np.testing.assert_array_equal(model.layers[0].attn.q_proj.kernel[...], base_kernel)
    tuned = jitted_logits(model, ids)
    assert np.abs(tuned - before).max() > 1e-3
    assert merge_lora(model) == 14
    assert not jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
    np.testing.assert_allclose(jitted_logits(model, ids), tuned, atol=1e-4)


def test_fresh_model_trains_with_optax_via_split_merge():
    model = init_model(TINY, seed=4)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    ids = jnp.asarray(np.random.RandomState(4).randint(0, TINY.vocab_size, (8, 16)))

    @jax.jit
    def train_step(params, opt_state, ids):
        def loss_fn(p):
            return _loss(nnx.merge(graphdef, p, rest), ids)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(30):
        params, opt_state, loss = train_step(params, opt_state, ids)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(np.log(TINY.vocab_size), rel=0.1)  # untrained: about uniform
    assert losses[-1] < 0.5 * losses[0]
    trained = nnx.merge(graphdef, params, rest)
    assert float(nnx.jit(_loss)(trained, ids)) < 0.5 * losses[0]


def test_token_logprobs_rejects_ids_outside_the_vocabulary_and_float_tokens():
    """Eager calls check the ids (an id >= vocab was silently gathered as a clamped/filled value); any call,
    jitted too, checks the dtype."""
    model = init_model(TINY, seed=0)
    ok = jnp.array([[1, 5, 60]], jnp.int32)
    assert token_logprobs(model, ok).shape == (1, 3)
    with pytest.raises(ValueError, match=r"token id 61 at index \[0, 2\] is outside the vocabulary \[0, 61\)"):
        token_logprobs(model, jnp.array([[1, 5, 61]], jnp.int32))
    with pytest.raises(ValueError, match=r"token id -1"):
        token_logprobs(model, np.array([[1, -1, 3]], np.int32))
    with pytest.raises(ValueError, match="integer token ids, got dtype float32"):
        token_logprobs(model, jnp.array([[1.0, 5.0]], jnp.float32))
    with pytest.raises(ValueError, match="integer token ids"):
        nnx.jit(token_logprobs)(model, jnp.array([[1.0, 5.0]], jnp.float32))
    np.testing.assert_array_equal(nnx.jit(token_logprobs)(model, ok), token_logprobs(model, ok))
