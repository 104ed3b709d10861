"""The in-process Flax step engine on a tiny Llama (synthetic step LM, toy character tokenizer)."""

from __future__ import annotations

import asyncio

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.engines.base import SamplingParams, StepEngine, StepRequest
from roro_jax.engines.flax_engine import FlaxEngine, synthetic_step_lm
from roro_jax.tasks.toy import build_tokenizer

PARAMS = SamplingParams(max_tokens=24, logprobs=5)
PROMPTS = ["7 * 3 + 4\n\n", "1 + 2\n\n", "9 - 3 * 2 + 1 - 4\n\n21 + 4 = 25\n\n", "5\n\n"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return synthetic_step_lm(tok, hidden=128, layers=2, seed=0, eos=0.03)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, model, tok):
    """Loaded from an HF folder (save_pretrained + the toy tokenizer), one compiled shape for the module."""
    from roro_jax.models import save_pretrained

    folder = tmp_path_factory.mktemp("synthetic_lm")
    save_pretrained(model, folder, tokenizer=tok)
    return FlaxEngine(folder, max_batch=16, batch_buckets=(16,), min_prompt_bucket=64, min_new_bucket=32,
                      name="small")


def reqs(engine, prompts, seeds):
    return [StepRequest(engine.encode(p), seed=s, request_id=f"r{i}") for i, (p, s) in enumerate(zip(prompts, seeds))]


def test_protocol_and_basic_fields(engine, model, tok):
    assert isinstance(engine, StepEngine)
    assert engine.n_params == sum(x.size for x in jax.tree.leaves(__import__("flax").nnx.state(model, __import__("flax").nnx.Param)))
    assert engine.encode("1 + 2")[0] == tok.bos_token_id  # prompts get BOS like the toy models expect
    assert engine.decode(engine.encode("1 + 2\n\n")) == "1 + 2\n\n"
    out = engine.generate_sync(reqs(engine, PROMPTS * 4, range(16)), PARAMS)
    assert len(out) == 16
    for r in out:
        L = r.n_tokens
        assert 1 <= L <= PARAMS.max_tokens
        assert r.finish_reason in ("stop", "eos", "length")
        assert r.logprobs.shape == (L,) and r.top_logprobs.shape == (L, 5)
        assert np.all(np.diff(r.top_logprobs, axis=1) <= 1e-6)  # best first
        assert np.all(r.logprobs <= r.top_logprobs[:, 0] + 1e-5)
        if r.finish_reason == "stop":
            assert r.text.endswith("\n\n") and "\n\n" not in r.text[:-2]
        if r.finish_reason == "length":
            assert L == PARAMS.max_tokens and not r.text.endswith("\n\n")
        if r.finish_reason == "eos":
            assert r.token_ids[-1] == tok.eos_token_id and "</s>" not in r.text
        if r.finish_reason != "eos":
            assert r.text == engine.decode(r.token_ids)
    reasons = {r.finish_reason for r in out}
    assert "stop" in reasons  # the synthetic LM writes "\n\n"-delimited steps


def test_logprobs_are_the_models(engine, model):
    """The engine's first-token top log-probs equal log_softmax of the (in-memory) model's logits."""
    ids = engine.encode(PROMPTS[0])
    (r,) = engine.generate_sync([StepRequest(ids, seed=3)], PARAMS)
    logits = model(jnp.asarray([ids], jnp.int32))[0, -1]
    ref = np.sort(np.asarray(jax.nn.log_softmax(logits)))[::-1][:5]
    np.testing.assert_allclose(r.top_logprobs[0], ref, atol=2e-5)


def test_eos_finish(engine, tok):
    out = engine.generate_sync(reqs(engine, ["1 + 2\n\n"] * 16, range(100, 116)),
                               SamplingParams(max_tokens=32, logprobs=5, stop=()))
    eos = [r for r in out if r.finish_reason == "eos"]
    assert eos, "no row sampled EOS (p=0.03 per content token over 32 tokens, 16 rows)"
    for r in eos:
        assert r.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in r.token_ids[:-1]


def test_batched_equals_alone_and_seeds(engine):
    batch = engine.generate_sync(reqs(engine, PROMPTS, [11, 12, 13, 14]), PARAMS)
    for i, p in enumerate(PROMPTS):  # different prompt lengths, left-padded in the batch
        (alone,) = engine.generate_sync(reqs(engine, [p], [11 + i]), PARAMS)
        assert alone.token_ids == batch[i].token_ids
        np.testing.assert_allclose(alone.logprobs, batch[i].logprobs, atol=1e-5)
    again = engine.generate_sync(reqs(engine, PROMPTS, [11, 12, 13, 14]), PARAMS)
    assert [r.token_ids for r in again] == [r.token_ids for r in batch]
    other = engine.generate_sync(reqs(engine, PROMPTS, [21, 22, 23, 24]), PARAMS)
    assert [r.token_ids for r in other] != [r.token_ids for r in batch]


def test_concurrent_calls_merge_into_batches_without_recompiles(engine):
    prompts = [PROMPTS[i % 4] for i in range(40)]
    seeds = list(range(500, 540))
    ref = engine.generate_sync(reqs(engine, prompts, seeds), PARAMS)
    compiles = engine.num_compiles

    async def main():
        before = dict(engine.stats)
        single = [engine.generate(reqs(engine, [p], [s]), PARAMS) for p, s in zip(prompts, seeds)]
        outs = await asyncio.gather(*single)
        batches = engine.stats["batches"] - before["batches"]
        await engine.aclose()
        return [o[0] for o in outs], batches

    out, batches = asyncio.run(main())
    assert [r.token_ids for r in out] == [r.token_ids for r in ref]
    assert batches == 3  # 40 single-request calls in the same tick -> ceil(40 / max_batch) batches
    assert engine.num_compiles == compiles == 1  # one bucket: batch 16 x prompt 64 x new 32


def test_mixed_params_share_a_batch(engine):
    short = SamplingParams(max_tokens=4, logprobs=5)
    nostop = SamplingParams(max_tokens=24, logprobs=5, stop=())
    ref = [engine.generate_sync(reqs(engine, PROMPTS[:2], [1, 2]), p) for p in (PARAMS, short, nostop)]

    async def main():
        before = engine.stats["batches"]
        outs = await asyncio.gather(*[engine.generate(reqs(engine, PROMPTS[:2], [1, 2]), p)
                                      for p in (PARAMS, short, nostop)])
        batches = engine.stats["batches"] - before
        await engine.aclose()
        return outs, batches

    outs, batches = asyncio.run(main())
    assert batches == 1  # each row keeps its own params inside one compiled call
    for got, want in zip(outs, ref):
        assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert all(r.n_tokens <= 4 for r in outs[1])
    assert all(r.finish_reason in ("length", "eos") for r in outs[2])


def test_errors(engine, model, tok):
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate_sync([StepRequest([], seed=0)], PARAMS)

    async def bad():
        return await engine.generate([StepRequest([], seed=0, request_id="x")], PARAMS)

    with pytest.raises(ValueError, match="'x' has an empty prompt"):
        asyncio.run(bad())
    with pytest.raises(TypeError, match="model folder or a"):
        FlaxEngine(42)
    with pytest.raises(ValueError, match="tokenizer is required"):
        FlaxEngine((model, None))
    with pytest.raises(ValueError, match="batch_buckets"):
        FlaxEngine((model, tok), max_batch=32, batch_buckets=(8, 16))
