"""vLLM's log-probs agree with the project's Flax model on the same weights and prompt.

For each model, vLLM generates steps (its chosen-token log-probs and top-20 log-probs per position);
the Flax model (``roro_jax.models.from_pretrained``) scores the same prompt + generated ids with
``token_logprobs`` and its full next-token distribution. The max absolute differences are reported in
the integration figures (``logprob_agreement``).
"""

from __future__ import annotations

import asyncio

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from roro_jax.engines import SamplingParams, StepRequest

pytestmark = pytest.mark.integration

PROMPTS = {
    "small": ["Q: 12+7*3=?\n\n", "Q: 5*6-4=?\n\n3", "Q: 9-2+8*1=?\n\n"],
    "smollm2": ["<|im_start|>user\nWhat is 17 times 3? Explain step by step.<|im_end|>\n<|im_start|>assistant\n",
                "The capital of France is"],
}
# fp32 on both sides; the tolerances leave room for different kernels/accumulation orders (30 layers for
# SmolLM2) while catching any real mismatch (wrong position, rope, norm or tokenisation: errors of O(1)).
TOL = {"small": 2e-4, "smollm2": 2e-3}  # measured here: 4e-6 and 6e-5


@pytest.mark.parametrize("name", ["small", "smollm2"])
def test_vllm_logprobs_match_flax(name, engine_for, model_dirs, report):
    from roro_jax.models import from_pretrained
    from roro_jax.models.score import token_logprobs

    eng = engine_for(name)
    params = SamplingParams(max_tokens=32, temperature=1.0, logprobs=20, stop=())
    reqs = [StepRequest(eng.encode(p), seed=i) for i, p in enumerate(PROMPTS[name])]

    async def go():
        try:
            return await eng.generate(reqs, params)
        finally:
            await eng.aclose()

    results = asyncio.run(go())
    model, _ = from_pretrained(model_dirs[name], dtype=jnp.float32)
    # eager (not jitted): each sequence has its own length, and compiling a 30-layer model per shape costs
    # minutes on 2 busy cores while one eager forward of ~60 tokens takes seconds; the numbers are the same
    score = lambda ids: token_logprobs(model, ids)  # noqa: E731
    logits_fn = lambda ids: jax.nn.log_softmax(model(ids).astype(jnp.float32), axis=-1)  # noqa: E731

    chosen_diff, top_diff, n_tok = 0.0, 0.0, 0
    for req, r in zip(reqs, results):
        seq = np.asarray(req.prompt_ids + r.token_ids, np.int32)[None]
        P, L = len(req.prompt_ids), r.n_tokens
        ours = np.asarray(score(seq))[0, P:P + L]  # entry t scores token t from the tokens before it
        chosen_diff = max(chosen_diff, float(np.max(np.abs(ours - r.logprobs))))
        full = np.asarray(logits_fn(seq))[0, P - 1:P - 1 + L]  # distribution that produced each new token
        ours_top = -np.sort(-full, axis=-1)[:, :20]
        top_diff = max(top_diff, float(np.max(np.abs(ours_top - r.top_logprobs))))
        # vLLM's chosen token is (almost always) in the model's support: a gross mismatch would show here
        np.testing.assert_allclose(ours, r.logprobs, atol=TOL[name], err_msg=f"{name}: chosen-token log-probs")
        n_tok += L
    report.setdefault("logprob_agreement", {})[name] = {
        "max_abs_diff_chosen": chosen_diff, "max_abs_diff_top20": top_diff, "tokens": n_tok,
        "model_dir": str(model_dirs[name])}
    assert top_diff < TOL[name], top_diff
