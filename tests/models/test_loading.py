"""Loading and saving HF folders: round trips through transformers, sharding, dtypes, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from roro_jax.models import (CheckpointError, DecoderConfig, UnsupportedModelError, from_pretrained, init_model,
                             save_pretrained)
from roro_jax.paths import REPO_ROOT

from lm_testkit import jitted_logits, padded_batch


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ckpt"
    shutil.copytree(folder, out)
    return out


def _edit_tensors(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named(hf_folder, tmp_path):
    folder = _copy(hf_folder("llama")[0], tmp_path)
    _edit_tensors(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        from_pretrained(folder)


def test_wrong_shape_is_named(hf_folder, tmp_path):
    folder = _copy(hf_folder("qwen2")[0], tmp_path)

    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:8]
    _edit_tensors(folder, shrink)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \(8, 32\), "
                                              r"expected \(16, 32\)"):
        from_pretrained(folder)


def test_unexpected_tensor_is_named(hf_folder, tmp_path):
    folder = _copy(hf_folder("llama")[0], tmp_path)  # llama without attention_bias
    _edit_tensors(folder, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                                  np.zeros(32, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"):
        from_pretrained(folder)


def test_unsupported_architecture(hf_folder, tmp_path):
    folder = _copy(hf_folder("llama")[0], tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        from_pretrained(folder)


def test_unsupported_activation(hf_folder, tmp_path):
    folder = _copy(hf_folder("llama")[0], tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="hidden_act='gelu'"):
        from_pretrained(folder)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama_tied_bias"])
def test_save_pretrained_loads_in_transformers(hf_folder, tmp_path, family):
    from transformers import AutoModelForCausalLM

    model, tokenizer = from_pretrained(hf_folder(family)[0])
    out = save_pretrained(model, tmp_path / "saved", tokenizer)
    ref = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(ref).__name__ == model.config.family.architecture
    ids, mask = padded_batch(np.random.RandomState(0), model.config.vocab_size, [9, 4], "right")
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = jitted_logits(model, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    again, _ = from_pretrained(out)
    np.testing.assert_array_equal(jitted_logits(again, ids, mask), got)


def test_random_init_round_trip_and_shards(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=1, head_dim=8, model_type="llama", tie_word_embeddings=True,
                        eos_token_ids=(1,), bos_token_id=2)
    model = init_model(cfg, seed=3)
    out = save_pretrained(model, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (out / "model.safetensors").exists()
    ids = np.random.RandomState(1).randint(0, 64, (2, 7))
    again, tok = from_pretrained(out)
    assert tok is None
    np.testing.assert_array_equal(jitted_logits(again, ids), jitted_logits(model, ids))
    ref = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(jitted_logits(model, ids), want, atol=1e-4, rtol=0)


def test_bfloat16_load(hf_folder):
    folder, _ = hf_folder("qwen3")
    m32, _ = from_pretrained(folder)
    m16, _ = from_pretrained(folder, dtype=jnp.bfloat16)
    assert m16.layers[0].attn.q_proj.kernel[...].dtype == jnp.bfloat16
    ids = np.random.RandomState(2).randint(3, m32.config.vocab_size, (2, 10))
    a, b = jitted_logits(m32, ids), jitted_logits(m16, ids)
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert np.abs(a - b).max() > 0  # really computed in bf16


def test_load_onto_mesh_with_named_shardings(hf_folder):
    folder, _ = hf_folder("qwen3")
    script = textwrap.dedent(f"""
        import numpy as np, jax
        from jax.sharding import Mesh
        from roro_jax.models import from_pretrained
        assert jax.device_count() == 4
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
        sharded, _ = from_pretrained({str(folder)!r}, mesh=mesh)
        plain, _ = from_pretrained({str(folder)!r})
        k = sharded.layers[0].attn.q_proj.kernel[...]
        assert k.sharding.spec == jax.sharding.PartitionSpec(None, "model"), k.sharding
        assert sharded.layers[0].mlp.down_proj.kernel[...].sharding.spec[0] == "model"
        ids = np.random.RandomState(0).randint(3, 90, (2, 8))
        a = np.asarray(jax.jit(lambda i: sharded(i))(ids)); b = np.asarray(jax.jit(lambda i: plain(i))(ids))
        np.testing.assert_allclose(a, b, atol=1e-5)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=str(REPO_ROOT),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
