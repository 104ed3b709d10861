"""The shipped toy models (roro_jax/assets/toy): they load with the project loader and with transformers,
agree logit for logit, write well-formed solutions, and the large one is clearly the stronger (measured
here, on held-out problems, with the project's sampler)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from roro_jax.tasks import toy
from roro_jax.worlds.toy import (MODEL_NAMES, load_toy_models, toy_heldout, toy_model_dir, toy_task_config,
                                 toy_train_meta)

STEP_RE = re.compile(r"^\d+ [+\-*/] \d+ = -?\d+$")
ANSWER_RE = re.compile(r"^Answer: -?\d+$")
N_ACC = 64


@pytest.fixture(scope="module")
def models():
    return load_toy_models()


@pytest.fixture(scope="module")
def problems():
    return toy_heldout(N_ACC)


@pytest.fixture(scope="module")
def greedy(models, problems):
    """Greedy whole solutions of the same held-out problems by both models: {name: [Completion]}."""
    from roro_jax.models.sampler import Sampler, SamplingParams

    out = {}
    for name, (model, tok) in zip(MODEL_NAMES, (models.small, models.large)):
        prompts = [tok.encode(toy.prompt_text(p)) for p in problems]
        out[name] = Sampler(model, tok).generate(prompts, SamplingParams(max_new_tokens=96, temperature=0.0))
    return out


def test_folders_and_task_config():
    task = toy_task_config()
    assert isinstance(task, toy.ToyConfig)
    assert json.loads((toy_model_dir("small").parent / "task.json").read_text()) == task.to_dict()
    for name in MODEL_NAMES:
        folder = toy_model_dir(name)
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            assert (folder / f).is_file(), f"{folder}/{f} missing"
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["head_dim"] >= 32
        meta = toy_train_meta(name)
        assert meta["task"] == task.to_dict() and meta["spec"]["steps"] > 0
    with pytest.raises(ValueError):
        toy_model_dir("medium")


def test_loads_with_project_loader(models):
    from roro_jax.models import Decoder, param_count

    (small, stok), (large, ltok), _ = models
    assert isinstance(small, Decoder) and isinstance(large, Decoder)
    assert param_count(small) <= param_count(large)
    reference = toy.build_tokenizer()
    text = toy.training_text(toy_heldout(1)[0])
    for model, tok in ((small, stok), (large, ltok)):
        assert model.config.vocab_size == len(tok)
        assert tok.encode(text) == reference.encode(text)
        assert tok.encode(text)[0] == tok.bos_token_id


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_transformers_logits_agree(name, models):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    folder = toy_model_dir(name)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model, tok = models.small if name == "small" else models.large
    assert hf.config.vocab_size == len(hf_tok)
    texts = [toy.training_text(p) for p in toy_heldout(3)]
    ids = [hf_tok.encode(t) for t in texts]
    assert ids == [tok.encode(t) for t in texts]
    n = max(map(len, ids))
    arr = np.zeros((len(ids), n), np.int64)
    mask = np.zeros((len(ids), n), np.int64)
    for i, row in enumerate(ids):
        arr[i, :len(row)] = row
        mask[i, :len(row)] = 1
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(arr), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(model(arr.astype(np.int32), mask.astype(bool)))
    m = mask.astype(bool)
    np.testing.assert_allclose(ours[m], ref[m], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_greedy_solutions_well_formed(name, greedy, problems):
    for p, c in list(zip(problems, greedy[name]))[:8]:
        assert c.finish_reason == "eos", (p.question, c.text)
        steps = c.text.split(toy.STEP_SEP)
        assert len(steps) >= 2, c.text
        assert all(STEP_RE.match(s) for s in steps[:-1]), c.text
        assert ANSWER_RE.match(steps[-1]), c.text


def test_large_accurate_small_weaker(greedy, problems):
    acc = {name: toy.summarize_checks([toy.check_solution(p, c.text) for p, c in zip(problems, greedy[name])])
           ["accuracy"] for name in MODEL_NAMES}
    assert acc["large"] >= 0.8, acc
    assert acc["small"] < acc["large"], acc


def test_pretraining_is_deterministic():
    """Same seed -> same weights (tiny spec, a few steps)."""
    import dataclasses

    import jax
    from flax import nnx

    from pipelines.pretrain_toy import CharCodec, ModelSpec, encode_batch, train_one

    tok = toy.build_tokenizer()
    task = toy_task_config()
    p = toy_heldout(2)
    codec = CharCodec(tok)
    assert codec.prompt_ids(p[0]) == tok.encode(toy.prompt_text(p[0]))
    tokens, attn, loss = encode_batch(p, codec, 72)
    assert tokens[0, attn[0]].tolist() == tok.encode(toy.training_text(p[0])) + [tok.eos_token_id]
    assert loss[0].sum() == len(p[0].solution) + 1

    spec = ModelSpec(hidden=32, layers=1, heads=1, intermediate=32, steps=3, batch=4, warmup=1)
    one_shape = dataclasses.replace(task, max_ops=task.min_ops)  # one compiled batch shape
    run = lambda seed: jax.tree.leaves(nnx.state(
        train_one("t", spec, one_shape, tok, seed=seed, eval_problems=[], eval_every=0, log=lambda *a: None,
                  progress=False)[0], nnx.Param))
    a, b = run(0), run(0)
    assert len(a) == len(b) > 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_corrupted_training_examples_by_kind():
    """``pretrain_toy.corrupted_ids``: the wrong step is of the drawn kind (a misread operand: the checker's
    ``operand`` verdict), may be the last operation only with ``at_last``, and the target repairs it on
    short problems and trusts it on long ones."""
    from pipelines.pretrain_toy import CharCodec, corrupted_ids

    tok = toy.build_tokenizer()
    codec = CharCodec(tok)
    cfg = toy.difficulty("chain", max_ops=6)
    seen = {"operand": 0, "result": 0, "last": 0, "repaired": 0, "trusted": 0}
    rng = np.random.default_rng(0)
    for p in toy.generate(60, cfg, seed=1, split="train"):
        n = p.meta["n_ops"]
        for kinds, at_last in ((("operand",), True), (("result",), False)):
            ctx, target = corrupted_ids(p, codec, rng, 3, kinds, at_last, cfg)
            text = tok.decode(ctx, skip_special_tokens=True)
            steps = toy.split_steps(text[len(toy.prompt_text(p)):]) + toy.split_steps(tok.decode(target, skip_special_tokens=True))
            chk = toy.check_solution(p, steps)
            wrong = chk.first_wrong
            assert wrong is not None and wrong < n, (p.question, steps)
            kind = chk.verdicts[wrong]
            seen["operand"] += kind == "operand"
            seen["result"] += kind == "arithmetic"
            if kinds == ("result",):
                assert kind == "arithmetic" and wrong < n - 1, steps
            seen["last"] += wrong == n - 1
            if n <= 3:
                assert chk.final_answer_correct, steps
                seen["repaired"] += 1
            else:
                assert not chk.final_answer_correct, steps
                seen["trusted"] += 1
    assert seen["operand"] >= 40 and seen["result"] >= 60 and seen["last"] >= 5, seen
    assert seen["repaired"] > 0 and seen["trusted"] > 0, seen
