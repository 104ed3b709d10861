"""The jitted KV-cache sampler: stopping, per-row settings, seeds, filtering, log-probs, bucketing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from roro_jax.models import from_pretrained
from roro_jax.buckets import bucket, round_up
from roro_jax.models.sampler import Sampler, SamplingParams
from roro_jax.models.score import token_logprobs

from lm_testkit import jitted_logits

GREEDY = dict(temperature=0.0, ignore_eos=True, logprobs=4)


@pytest.fixture(scope="module")
def setup(hf_folder):
    model, tokenizer = from_pretrained(hf_folder("llama")[0])
    # One prompt bucket (32) for every test, so the whole module compiles three loops (batch 1, 4, 256).
    return model, tokenizer, Sampler(model, tokenizer, min_prompt_bucket=32)


def prompts_for(tokenizer):
    return [tokenizer.encode(t) for t in ("The cat sat", "Once upon a time,", "2+2=")]


def test_bucket():
    assert [bucket(n) for n in (0, 1, 2, 3, 5, 16, 17)] == [1, 1, 2, 4, 8, 16, 32]
    assert bucket(3, 16) == 16
    assert [bucket(n, ladder=(4, 12, 64)) for n in (1, 4, 5, 12, 13, 64)] == [4, 4, 12, 12, 64, 64]
    with pytest.raises(ValueError, match="holds 65"):
        bucket(65, ladder=(4, 12, 64))
    assert [round_up(n, 32) for n in (0, 1, 32, 33, 64, 65)] == [32, 32, 32, 64, 64, 96]


def test_greedy_logprobs_agree_with_scoring(setup):
    model, tokenizer, sampler = setup
    prompts = prompts_for(tokenizer)
    outs = sampler.generate(prompts, SamplingParams(max_new_tokens=20, **GREEDY))
    width = max(len(p) for p in prompts) + 20
    seqs = np.zeros((len(prompts), width), np.int32)
    masks = np.zeros((len(prompts), width), bool)
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        row = prompt + out.token_ids
        seqs[i, :len(row)], masks[i, :len(row)] = row, True
    scored_all = np.asarray(nnx.jit(token_logprobs)(model, jnp.asarray(seqs), jnp.asarray(masks)))
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        assert out.finish_reason == "length" and len(out.token_ids) == 20
        assert out.top_ids.shape == (20, 4) and out.top_logprobs.shape == (20, 4)
        np.testing.assert_array_equal(out.top_ids[:, 0], out.token_ids)  # greedy = top-1
        np.testing.assert_allclose(out.logprobs, out.top_logprobs[:, 0], atol=1e-6)
        assert np.all(np.diff(out.top_logprobs, axis=1) <= 0)
        scored = scored_all[i, len(prompt):len(prompt) + 20]
        np.testing.assert_allclose(out.logprobs, scored, atol=1e-4)


def _first_completion(texts, tokens, stop):
    acc = ""
    for i, tok in enumerate(tokens):
        acc += texts[tok]
        if stop in acc:
            return i
    return None


def test_stop_string_across_token_boundaries(setup):
    model, tokenizer, sampler = setup
    prompt = prompts_for(tokenizer)[1]
    ref = sampler.generate([prompt], SamplingParams(max_new_tokens=32, **GREEDY))[0]
    texts = {i: tokenizer.decode([i]) for i in range(model.config.vocab_size)}  # raw: specials included
    j = next(j for j in range(3, 30) if min(ref.token_ids[j], ref.token_ids[j + 1]) > 2)  # two char tokens
    stop = texts[ref.token_ids[j]] + texts[ref.token_ids[j + 1]]  # two char tokens: spans a boundary
    k = _first_completion(texts, ref.token_ids, stop)
    for include in (True, False):
        out = sampler.generate([prompt], SamplingParams(max_new_tokens=32, stop=(stop,),
                                                        include_stop_str_in_output=include, **GREEDY))[0]
        assert out.finish_reason == "stop" and out.stop_str == stop
        assert out.token_ids == ref.token_ids[:k + 1]
        full = tokenizer.decode(ref.token_ids[:k + 1], skip_special_tokens=True)
        at = full.rfind(stop)
        assert out.text == (full[:at + len(stop)] if include else full[:at])


def test_stop_token_and_eos(setup):
    model, tokenizer, sampler = setup
    prompt = prompts_for(tokenizer)[0]
    ref = sampler.generate([prompt], SamplingParams(max_new_tokens=32, **GREEDY))[0]
    tok = ref.token_ids[6]
    first = ref.token_ids.index(tok)
    out = sampler.generate([prompt], SamplingParams(max_new_tokens=32, stop_token_ids=(tok,), **GREEDY))[0]
    assert out.finish_reason == "stop" and out.token_ids == ref.token_ids[:first + 1]
    saved = sampler.eos_token_ids
    try:
        sampler.eos_token_ids = (tok,)
        eos = sampler.generate([prompt], SamplingParams(max_new_tokens=32, temperature=0.0, logprobs=4))[0]
        assert eos.finish_reason == "eos" and eos.token_ids == ref.token_ids[:first + 1]
        ignored = sampler.generate([prompt], SamplingParams(max_new_tokens=32, **GREEDY))[0]
        assert ignored.token_ids == ref.token_ids
    finally:
        sampler.eos_token_ids = saved


def test_per_row_settings_and_no_recompilation(setup):
    model, tokenizer, sampler = setup
    prompts = prompts_for(tokenizer)
    limits = [3, 7, 20]
    sampler.generate(prompts, SamplingParams(max_new_tokens=20, **GREEDY))
    compiles = sampler.num_compiles
    batch = sampler.generate(prompts, [SamplingParams(max_new_tokens=n, **GREEDY) for n in limits])
    assert [len(o.token_ids) for o in batch] == limits
    full = sampler.generate(prompts, SamplingParams(max_new_tokens=20, **GREEDY))
    for o, f, n in zip(batch, full, limits):
        assert o.token_ids == f.token_ids[:n]
    # other prompt lengths, sizes and settings inside the same buckets reuse the compiled loop
    sampler.generate([prompts[0][:5], prompts[1], prompts[2][:2], prompts[1][:9]],
                     [SamplingParams(max_new_tokens=n, temperature=t, top_p=0.9, top_k=5, seed=s, logprobs=3)
                      for n, t, s in ((17, 0.5, 1), (32, 1.0, 2), (9, 0.0, 3), (25, 2.0, 4))])
    assert sampler.num_compiles == compiles


def test_seeds_are_reproducible_and_batch_independent(setup):
    model, tokenizer, sampler = setup
    prompts = prompts_for(tokenizer)
    sp = [SamplingParams(max_new_tokens=24, temperature=1.0, seed=s, ignore_eos=True, logprobs=4)
          for s in (11, 12, 13)]
    a = sampler.generate(prompts, sp)
    b = sampler.generate([prompts[0], prompts[2], prompts[1]], [sp[0], sp[2], sp[1]])
    assert a[0].token_ids == b[0].token_ids and a[1].token_ids == b[2].token_ids
    other = sampler.generate([prompts[0]] * 3, [sp[0], SamplingParams(**{**sp[0].__dict__, "seed": 99}), sp[1]])
    assert other[0].token_ids == a[0].token_ids
    assert other[1].token_ids != a[0].token_ids


def test_top_k_one_and_tiny_top_p_are_greedy(setup):
    model, tokenizer, sampler = setup
    prompts = prompts_for(tokenizer)
    greedy = sampler.generate(prompts, SamplingParams(max_new_tokens=20, **GREEDY))
    topk1 = sampler.generate(prompts, SamplingParams(max_new_tokens=20, temperature=1.5, top_k=1, seed=5,
                                                     ignore_eos=True, logprobs=4))
    tiny_p = sampler.generate(prompts, SamplingParams(max_new_tokens=20, temperature=1.5, top_p=1e-6, seed=5,
                                                      ignore_eos=True, logprobs=4))
    for g, k, p in zip(greedy, topk1, tiny_p):
        assert g.token_ids == k.token_ids == p.token_ids


def test_sampling_follows_the_filtered_distribution(setup):
    model, tokenizer, sampler = setup
    prompt = prompts_for(tokenizer)[2]
    n = 256
    logits = jitted_logits(model, np.asarray([prompt]))[0, -1] / 0.7
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)

    def first_tokens(**kw):
        outs = sampler.generate([prompt] * n, [SamplingParams(max_new_tokens=1, seed=s, temperature=0.7, **kw)
                                               for s in range(n)])
        return np.array([o.token_ids[0] for o in outs])

    free = first_tokens()
    counts = np.bincount(free, minlength=len(probs)) / n
    top = order[:3]
    assert np.all(np.abs(counts[top] - probs[top]) < 4 * np.sqrt(probs[top] * (1 - probs[top]) / n) + 1e-3)
    k3 = first_tokens(top_k=3)
    assert set(k3) <= set(top) and len(set(k3)) == 3
    mass = np.cumsum(probs[order])
    nucleus = set(order[:int(np.searchsorted(mass, 0.5)) + 1])
    assert set(first_tokens(top_p=0.5)) <= nucleus


def test_text_prompts_and_bad_input(setup):
    model, tokenizer, sampler = setup
    out = sampler.generate(["The cat sat"], SamplingParams(max_new_tokens=4, **GREEDY))[0]
    ids = sampler.generate([tokenizer.encode("The cat sat")], SamplingParams(max_new_tokens=4, **GREEDY))[0]
    assert out.token_ids == ids.token_ids and out.text == tokenizer.decode(ids.token_ids, skip_special_tokens=True)
    with pytest.raises(ValueError, match="empty prompt"):
        sampler.generate([[]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sampler.generate([[5, 100000]])
    with pytest.raises(ValueError, match="logprobs=21"):
        SamplingParams(logprobs=21)


@pytest.mark.parametrize("candidates", [16, 1000])
def test_candidate_threshold_equals_full_sort(candidates):
    """The threshold from the top candidates keeps exactly what a full sort keeps, for every row it calls
    fitting; rows whose kept set is wider than the candidates (or with no filter) are called not fitting."""
    from roro_jax.models.sampler import _candidate_threshold, _filter_sorted

    rng = np.random.RandomState(0)
    scale = np.array([8.0, 8.0, 8.0, 0.05, 8.0, 8.0, 8.0])[:, None]  # row 3 is nearly flat: nucleus > 16
    logits = jnp.asarray(rng.randn(7, 1000) * scale, jnp.float32)
    top_k = jnp.array([0, 5, 0, 0, 40, 1000, 0])
    top_p = jnp.array([0.9, 1.0, 0.3, 0.9, 0.8, 1.0, 1.0])  # rows 5 and 6 keep everything
    want = np.isfinite(np.asarray(jax.jit(_filter_sorted)(logits, top_k, top_p)))
    cand = jax.lax.top_k(logits, candidates)[0]
    threshold, fits = jax.jit(_candidate_threshold)(logits, cand, top_k, top_p)
    fits = np.asarray(fits)
    wide = candidates == 1000  # row 3's nucleus and row 4's top-40 need more than 16 candidates
    assert fits[[0, 1, 2]].all() and not fits[[5, 6]].any() and fits[3] == wide and fits[4] == wide
    got = np.asarray(logits) >= np.asarray(threshold)[:, None]
    np.testing.assert_array_equal(got[fits], want[fits])
    assert int(want[1].sum()) == 5 and bool(want[5].all()) and bool(want[6].all())


def _rows(temperature, top_k, top_p, seeds):
    return dict(temperature=jnp.asarray(temperature, jnp.float32), top_k=jnp.asarray(top_k, jnp.int32),
                top_p=jnp.asarray(top_p, jnp.float32), seed=jnp.asarray(seeds, jnp.uint32))


def test_candidate_draw_equals_vocabulary_draw():
    """A draw from the top candidates and one from the whole vocabulary pick the same token.

    Rows 0-3 fit in 16 candidates; adding row 4 (flat logits, top-p 0.9: its nucleus is ~900 tokens) makes
    the batch draw from the whole vocabulary, which must not change rows 0-3's tokens at any step.
    """
    from roro_jax.models.sampler import _choose

    rng = np.random.RandomState(1)
    vocab = 1000
    peaked = rng.randn(4, vocab)
    for row in range(4):  # six likely tokens per row, elsewhere a long tail
        peaked[row, rng.choice(vocab, 6, replace=False)] += 7.0
    flat = rng.randn(1, vocab) * 0.05
    fit = _rows([0.8, 1.3, 0.7, 0.0], [0, 5, 3, 0], [0.9, 1.0, 0.6, 0.5], [3, 4, 5, 6])
    wide = _rows([0.8, 1.3, 0.7, 0.0, 1.0], [0, 5, 3, 0, 0], [0.9, 1.0, 0.6, 0.5, 0.9], [3, 4, 5, 6, 7])
    from roro_jax.models.sampler import _candidate_threshold

    for logits, rows in ((peaked, fit), (np.concatenate([peaked, flat]), wide)):  # which path each batch takes
        scaled = jnp.asarray(logits, jnp.float32) / rows["temperature"].clip(1e-6)[:, None]
        _, fits = _candidate_threshold(scaled, jax.lax.top_k(scaled, 16)[0], rows["top_k"], rows["top_p"])
        assert bool(fits[:4].all()) and (len(fits) == 4 or not bool(fits[4]))
    choose = jax.jit(_choose, static_argnames="candidates")
    alone, together = [], []
    for step in range(64):
        alone.append(choose(jnp.asarray(peaked, jnp.float32), fit, jnp.int32(step), candidates=16))
        together.append(choose(jnp.asarray(np.concatenate([peaked, flat]), jnp.float32), wide, jnp.int32(step),
                               candidates=16)[:4])
    alone, together = np.stack(alone), np.stack(together)
    np.testing.assert_array_equal(alone, together)
    assert len(set(alone[:, 0])) > 1  # the draws are random, not all the top token
    assert set(alone[:, 1]) <= set(np.argsort(-peaked[1])[:5])  # top-5
    np.testing.assert_array_equal(alone[:, 3], np.argmax(peaked[3]))  # temperature 0: greedy


def test_gumbel_noise_is_a_function_of_key_and_token():
    from roro_jax.models.sampler import _gumbel

    keys = jax.vmap(lambda s: jax.random.key_data(jax.random.key(s)))(jnp.arange(3, dtype=jnp.uint32))
    full = np.asarray(_gumbel(keys, jnp.arange(500)[None, :]))
    some = np.asarray(_gumbel(keys, jnp.asarray([[7, 499, 0], [3, 3, 250], [1, 2, 4]])))
    np.testing.assert_array_equal(some, np.take_along_axis(full, np.asarray([[7, 499, 0], [3, 3, 250], [1, 2, 4]]),
                                                            axis=1))
    assert np.all(np.isfinite(full)) and abs(full.mean() - 0.5772) < 0.1  # Gumbel(0, 1) has mean ~0.5772
    if jax.config.jax_threefry_partitionable:  # then jax.random draws the very same noise
        want = jax.vmap(lambda k: jax.random.gumbel(jax.random.wrap_key_data(k), (500,)))(keys)
        np.testing.assert_array_equal(full, np.asarray(want))


def test_text_prompts_get_the_same_tokens_as_tokenizer_encode():
    """A text prompt is encoded as ``tokenizer.encode(text)`` (BOS included, as the shipped toy models were
    trained and as ``FlaxEngine.encode`` does), so text and ids give the same prompt and the same greedy
    completion; a 2-D integer numpy array is a batch of id prompts."""
    from roro_jax.engines.flax_engine import FlaxEngine
    from roro_jax.tasks import toy
    from roro_jax.worlds.toy import load_toy_models, toy_heldout, toy_model_dir

    (model, tok), _, _ = load_toy_models()
    sampler = Sampler(model, tok)
    texts = [toy.prompt_text(p) for p in toy_heldout(4)]
    sp = SamplingParams(max_new_tokens=24, temperature=0.0)
    from_text = sampler.generate(texts, sp)
    from_ids = sampler.generate([tok.encode(t) for t in texts], sp)
    engine = FlaxEngine(toy_model_dir("small"))
    for t, a, b in zip(texts, from_text, from_ids):
        assert a.prompt_ids == b.prompt_ids == tok.encode(t) == engine.encode(t)
        assert a.prompt_ids[0] == tok.bos_token_id
        assert a.token_ids == b.token_ids and a.text == b.text

    ids = tok.encode(texts[0])
    (arr,) = sampler.generate(np.array([ids]), sp)
    assert arr.prompt_ids == ids and arr.token_ids == from_ids[0].token_ids
    with pytest.raises(ValueError, match="integer token ids"):
        sampler.generate([np.array([1.5, 2.0])], sp)
