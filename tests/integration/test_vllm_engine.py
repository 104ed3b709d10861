"""The ``openai_server`` engine against real vLLM servers: steps, log-probs, stop handling, seeds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from roro_jax.engines import SamplingParams, StepRequest

pytestmark = pytest.mark.integration

TOY_PROMPT = "Q: 12+7*3=?\n\n"
SMOL_PROMPT = ("<|im_start|>user\nWrite three short paragraphs about the sea, separated by blank lines."
               "<|im_end|>\n<|im_start|>assistant\n")


def gen(engine, reqs, params):
    async def go():
        try:
            return await engine.generate(reqs, params)
        finally:
            await engine.aclose()

    return asyncio.run(go())


def check_result(r, params, eos_id):
    L = r.n_tokens
    assert L >= 1 and L <= params.max_tokens
    assert r.logprobs.shape == (L,) and r.logprobs.dtype == np.float32
    assert r.top_logprobs.shape == (L, params.logprobs)
    assert np.all(np.isfinite(r.logprobs)) and np.all(r.logprobs <= 1e-6)
    top = r.top_logprobs
    assert np.all(np.diff(top, axis=1) <= 1e-6), "top-k rows sorted best first"
    # the sampled token is never more likely than the best one; where it is in the top-k, the values agree
    assert np.all(r.logprobs <= top[:, 0] + 1e-5)
    ids = r.meta["top_ids"]
    for i, t in enumerate(r.token_ids):
        hit = np.nonzero(ids[i] == t)[0]
        if hit.size:
            assert abs(top[i, hit[0]] - r.logprobs[i]) < 1e-5
    # total probability of the top-k cannot exceed 1
    assert np.all(np.exp(top).sum(axis=1) <= 1 + 1e-4)
    if r.finish_reason == "stop":
        assert r.text.endswith("\n\n") and "\n\n" not in r.text[:-2]
    elif r.finish_reason == "eos":
        assert r.token_ids[-1] == eos_id and "\n\n" not in r.text
    else:
        assert r.finish_reason == "length" and L == params.max_tokens and "\n\n" not in r.text


def test_toy_steps_stop_eos_length(engine_for, report):
    eng = engine_for("small")
    prompt = eng.encode(TOY_PROMPT)
    assert prompt[0] == eng.bos_token_id
    params = SamplingParams(max_tokens=24, temperature=1.0, logprobs=5)
    reqs = [StepRequest(prompt, seed=s, request_id=f"s{s}") for s in range(48)]
    rs = gen(eng, reqs, params)
    reasons = {}
    for r in rs:
        check_result(r, params, eng.eos_token_id)
        # decoding the returned ids reproduces vLLM's text (the toy tokenizer is character-level)
        assert eng.decode(r.token_ids) == r.text
        reasons[r.finish_reason] = reasons.get(r.finish_reason, 0) + 1
    report["toy_finish_reasons_48_steps"] = reasons
    assert reasons.get("stop", 0) >= 5, reasons  # steps do end at the delimiter
    if "random" in report.get("toy_models", ""):  # a trained toy model may well repeat its first step
        assert len({tuple(r.token_ids) for r in rs}) > 24  # seeds give different samples


def test_same_seed_same_step_and_length_limit(engine_for):
    eng = engine_for("small")
    prompt = eng.encode(TOY_PROMPT)
    params = SamplingParams(max_tokens=6, stop=(), logprobs=3)  # no stop string: always the full budget
    a = gen(eng, [StepRequest(prompt, seed=s) for s in (1, 2, 1)], params)
    assert a[0].token_ids == a[2].token_ids and a[0].text == a[2].text
    np.testing.assert_allclose(a[0].logprobs, a[2].logprobs, atol=1e-5)
    b = gen(eng, [StepRequest(prompt, seed=1)], params)  # a separate call (new event loop) repeats too
    assert b[0].token_ids == a[0].token_ids
    for r in a:
        assert r.finish_reason in ("length", "eos")
        if r.finish_reason == "length":
            assert r.n_tokens == 6


def test_greedy_is_argmax(engine_for):
    eng = engine_for("large")
    prompt = eng.encode(TOY_PROMPT)
    [r] = gen(eng, [StepRequest(prompt, seed=0)], SamplingParams(max_tokens=16, temperature=0.0, logprobs=4))
    np.testing.assert_allclose(r.logprobs, r.top_logprobs[:, 0], atol=1e-5)
    np.testing.assert_array_equal(r.token_ids, r.meta["top_ids"][:, 0])


def test_smollm2_paragraph_steps(engine_for, report):
    """A real pretrained model writes paragraphs: steps end at the blank line and carry the delimiter."""
    eng = engine_for("smollm2")
    prompt = eng.encode(SMOL_PROMPT)
    params = SamplingParams(max_tokens=96, temperature=0.7, top_p=0.95, logprobs=20)
    rs = gen(eng, [StepRequest(prompt, seed=s) for s in range(6)], params)
    for r in rs:
        check_result(r, params, eng.eos_token_id)
    assert len({tuple(r.token_ids) for r in rs}) == len(rs)  # different seeds, different samples
    stops = [r for r in rs if r.finish_reason == "stop"]
    report["smollm2_finish_reasons_6_steps"] = {k: sum(r.finish_reason == k for r in rs)
                                                for k in ("stop", "eos", "length")}
    assert stops, [r.text for r in rs]
    # continuing from the prefix + the first step gives the next paragraph
    nxt = gen(eng, [StepRequest(eng.encode(SMOL_PROMPT + stops[0].text), seed=0)], params)[0]
    check_result(nxt, params, eng.eos_token_id)
    assert nxt.text.strip() and nxt.text != stops[0].text


def test_smollm2_eos(engine_for):
    """A short chat answer ends at ``<|im_end|>`` (SmolLM2's EOS): finish "eos", id kept, text without it."""
    eng = engine_for("smollm2")
    prompt = eng.encode("<|im_start|>user\nWhat is 2+2? Reply with just the number.<|im_end|>\n"
                        "<|im_start|>assistant\n")
    [r] = gen(eng, [StepRequest(prompt, seed=0)], SamplingParams(max_tokens=16, temperature=0.0, logprobs=3))
    assert r.finish_reason == "eos", (r.text, r.finish_reason)
    assert r.token_ids[-1] == eng.eos_token_id and "<|im_end|>" not in r.text and "4" in r.text
    check_result(r, SamplingParams(max_tokens=16, temperature=0.0, logprobs=3), eng.eos_token_id)


def test_several_endpoints_spread_load(servers, model_dirs):
    """Two endpoints (here: the same server under two URLs) share the requests; all results are valid."""
    s = servers["small"]
    from roro_jax.engines.openai_server import OpenAIServerEngine

    eng = OpenAIServerEngine(s.name, [s.url, s.url.replace("127.0.0.1", "localhost")],
                             tokenizer_path=model_dirs["small"], concurrency=8)
    prompt = eng.encode(TOY_PROMPT)
    params = SamplingParams(max_tokens=12, logprobs=2)
    rs = gen(eng, [StepRequest(prompt, seed=s) for s in range(16)], params)
    used = {r.meta["endpoint"] for r in rs}
    assert len(used) == 2
    for r in rs:
        check_result(r, params, eng.eos_token_id)
