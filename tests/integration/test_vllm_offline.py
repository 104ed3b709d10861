"""The ``vllm_offline`` engine (``vllm.LLM`` in-process) inside the vLLM venv's own Python.

vLLM is not installed in the project's venv, so the engine runs in a subprocess with the vLLM venv's
interpreter and the repository on ``PYTHONPATH``; it prints its results as JSON. They must be valid steps
and match what the ``openai_server`` engine gets from the served copy of the same model for the same
prompts and seeds (same tokens; log-probs equal to float tolerance).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from roro_jax.engines import SamplingParams, StepRequest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

PROMPT = "Q: 12+7*3=?\n\n"
SEEDS = list(range(8))
PARAMS = dict(max_tokens=20, temperature=1.0, logprobs=5)

SCRIPT = r"""
import asyncio, json, sys
from roro_jax.engines import make_engine, SamplingParams, StepRequest
model, prompt, seeds, params = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
eng = make_engine("vllm_offline", model=model, dtype="float32", max_model_len=512, seed=0,
                  llm_kwargs={"optimization_level": 0, "max_num_seqs": 16})
ids = eng.encode(prompt)

async def main():
    try:
        # one request per call, from concurrent coroutines (as the rollout does): merged into batches
        one = lambda s: eng.generate([StepRequest(ids, seed=s, request_id=str(s))], SamplingParams(**params))
        return [r for rs in await asyncio.gather(*(one(s) for s in seeds)) for r in rs]
    finally:
        await eng.aclose()

rs = asyncio.run(main())
print("RESULT " + json.dumps({"prompt_ids": ids, "n_params": eng.n_params, "stats": eng.stats, "results": [
    {"token_ids": r.token_ids, "text": r.text, "finish_reason": r.finish_reason,
     "logprobs": r.logprobs.tolist(), "top_logprobs": r.top_logprobs.tolist()} for r in rs]}))
"""


def test_offline_engine_matches_server(vllm_python, model_dirs, engine_for, report):
    model = model_dirs["small"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VIRTUAL_ENV", "VLLM_TARGET_DEVICE")}
    env.update(PYTHONPATH=str(REPO_ROOT), VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1",
               HF_HUB_OFFLINE="1")  # no VLLM_TARGET_DEVICE: the setup makes CPU detection work
    t0 = time.time()
    proc = subprocess.run([str(vllm_python), "-c", SCRIPT, str(model), json.dumps(PROMPT), json.dumps(SEEDS),
                           json.dumps(PARAMS)], env=env, capture_output=True, text=True, timeout=900,
                          cwd="/tmp")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, f"offline engine failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    offline = json.loads(line[len("RESULT "):])
    report["vllm_offline_seconds"] = round(time.time() - t0, 1)

    stats = offline["stats"]
    assert stats["calls"] == len(SEEDS) and stats["requests"] == len(SEEDS)
    assert stats["batches"] < len(SEEDS), stats  # concurrent single-request calls were batched
    eng = engine_for("small")
    assert offline["prompt_ids"] == eng.encode(PROMPT)
    assert offline["n_params"] == eng.n_params > 0

    async def go():
        try:
            return await eng.generate([StepRequest(offline["prompt_ids"], seed=s) for s in SEEDS],
                                      SamplingParams(**PARAMS))
        finally:
            await eng.aclose()

    served = asyncio.run(go())
    same = 0
    max_diff = 0.0
    for o, s in zip(offline["results"], served):
        L = len(o["token_ids"])
        assert o["finish_reason"] in ("stop", "eos", "length") and 1 <= L <= PARAMS["max_tokens"]
        assert np.asarray(o["top_logprobs"]).shape == (L, PARAMS["logprobs"])
        if o["finish_reason"] == "stop":
            assert o["text"].endswith("\n\n")
        if o["token_ids"] == s.token_ids:
            same += 1
            assert o["text"] == s.text and o["finish_reason"] == s.finish_reason
            max_diff = max(max_diff, float(np.max(np.abs(np.asarray(o["logprobs"]) - s.logprobs))))
            np.testing.assert_allclose(np.asarray(o["top_logprobs"], np.float32), s.top_logprobs, atol=1e-4)
    report["vllm_offline_vs_server"] = {"same_tokens": f"{same}/{len(SEEDS)}", "max_abs_diff_logprob": max_diff,
                                        "offline_batches": stats["batches"], "offline_calls": stats["calls"]}
    # seeded sampling of the same fp32 model: the same tokens in (nearly) every case
    assert same >= len(SEEDS) - 1, f"only {same}/{len(SEEDS)} seeded samples agree"
    assert max_diff < 1e-4
