"""Our decoder vs transformers' PyTorch implementation on tiny random checkpoints of every family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from roro_jax.models import from_pretrained
from roro_jax.models.decoder import positions_from_mask
from roro_jax.models.sampler import Sampler, SamplingParams

from lm_testkit import FAMILY_CONFIGS, jitted_decode, jitted_logits, jitted_prefill, padded_batch

FAMILIES = list(FAMILY_CONFIGS)


def torch_logits(model, ids, mask):
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(pos)).logits.float().numpy()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_transformers(hf_folder, family, side):
    folder, ref_model = hf_folder(family)
    model, _ = from_pretrained(folder)
    ids, mask = padded_batch(np.random.RandomState(1), model.config.vocab_size, [13, 7, 1, 10], side)
    ref = torch_logits(ref_model, ids, mask)
    ours = jitted_logits(model, ids, mask)
    real = mask.astype(bool)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    assert np.isfinite(ours).all()


def test_padding_does_not_change_real_tokens(hf_folder):
    folder, _ = hf_folder("qwen3")
    model, _ = from_pretrained(folder)
    ids, mask = padded_batch(np.random.RandomState(2), model.config.vocab_size, [9], "left")
    alone = jitted_logits(model, ids)
    padded = np.concatenate([np.zeros((1, 5), ids.dtype), ids], axis=1)
    pmask = np.concatenate([np.zeros((1, 5), mask.dtype), mask], axis=1)
    together = jitted_logits(model, padded, pmask)[:, 5:]
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)


def test_jit_equals_eager(hf_folder):
    folder, _ = hf_folder("llama")
    model, _ = from_pretrained(folder)
    ids, mask = padded_batch(np.random.RandomState(3), model.config.vocab_size, [8, 5], "left")
    eager = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    jitted = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))
    graphdef, state = nnx.split(model)
    functional = jax.jit(lambda s, i, a: nnx.merge(graphdef, s)(i, a))
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(functional(state, ids, mask)), eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_kv_cache_path_equals_full_forward(hf_folder, family):
    folder, _ = hf_folder(family)
    model, _ = from_pretrained(folder)
    ids, mask = padded_batch(np.random.RandomState(4), model.config.vocab_size, [12, 6], "left")
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    full = jitted_logits(model, ids, mask)
    prompt_len, total = 4, ids.shape[1]
    cache = model.init_cache(ids.shape[0], total)
    logits, cache = jitted_prefill(model, ids[:, :prompt_len], mask[:, :prompt_len], cache)
    got = [np.asarray(logits)]
    positions = positions_from_mask(mask)
    kv_valid = jnp.zeros(ids.shape, bool).at[:, :prompt_len].set(mask[:, :prompt_len].astype(bool))
    for slot in range(prompt_len, total):
        kv_valid = kv_valid.at[:, slot].set(mask[:, slot].astype(bool))
        logits, cache = jitted_decode(model, ids[:, slot], positions[:, slot], cache, kv_valid, jnp.int32(slot))
        got.append(np.asarray(logits))
    got = np.stack(got, axis=1)  # logits at slots prompt_len-1 .. total-1
    want = full[:, prompt_len - 1:]
    real = np.asarray(mask[:, prompt_len - 1:]).astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_greedy_generation_matches_transformers_generate(hf_folder, family):
    folder, ref_model = hf_folder(family)
    model, tokenizer = from_pretrained(folder)
    rng = np.random.RandomState(5)
    prompts = [rng.randint(3, model.config.vocab_size, n).tolist() for n in (5, 11, 2)]
    outs = Sampler(model, tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=32, temperature=0.0, ignore_eos=True))
    ref_model.generation_config.eos_token_id = None  # plain argmax for 32 tokens on both sides
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = ref_model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                     pad_token_id=0)[0, len(prompt):].tolist()
        assert len(ref) == 32
        assert out.token_ids == ref
        assert out.finish_reason == "length"


def test_blocked_causal_attention_equals_plain_attention():
    from roro_jax.models.decoder import attend, attend_causal, causal_mask

    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 300, 6, 8))
    k = jax.random.normal(keys[1], (2, 300, 2, 8))
    v = jax.random.normal(keys[2], (2, 300, 2, 8))
    valid = jnp.ones((2, 300), bool).at[1, :37].set(False)  # a left-padded row
    mask = causal_mask(valid)
    plain = jax.jit(attend)(q, k, v, mask)
    blocked = jax.jit(attend_causal, static_argnames="block")(q, k, v, mask, block=128)  # ragged last block
    np.testing.assert_allclose(np.asarray(blocked)[valid], np.asarray(plain)[valid], atol=1e-5)
