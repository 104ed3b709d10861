"""Hugging Face folders <-> :class:`~roro_jax.models.decoder.Decoder`: ``config.json``, ``*.safetensors``, tokenizer.

:func:`from_pretrained` reads a folder written by transformers' ``save_pretrained`` (single
``model.safetensors`` or shards listed in ``model.safetensors.index.json``), maps every tensor through
:data:`roro_jax.models.families.WEIGHT_MAP`, checks every name and shape, and places each array on the
requested mesh (if any) as it goes. :func:`save_pretrained` writes the inverse: a folder that transformers'
``AutoModelForCausalLM.from_pretrained`` and vLLM load.

Errors name the offending tensor and file: :class:`CheckpointError` for missing, unexpected or misshapen
tensors, :class:`~roro_jax.models.config.UnsupportedModelError` for configs we do not implement.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from roro_jax.models.config import DecoderConfig
from roro_jax.models.decoder import Decoder, abstract_model
from roro_jax.models.families import IGNORED_HF_TENSORS, hf_to_ours, ours_to_hf
from roro_jax.tokenizer import load_tokenizer

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint's tensors do not match the model its ``config.json`` describes."""


# --------------------------------------------------------------------------- reading
def read_config(folder: str | os.PathLike) -> DecoderConfig:
    """Parse ``folder/config.json`` into a :class:`DecoderConfig`."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config.json in the model folder")
    with open(path) as f:
        return DecoderConfig.from_hf(json.load(f))


def _tensor_files(folder: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    index = folder / SAFE_INDEX
    if index.exists():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: folder / fname for name, fname in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors files and no {SAFE_INDEX}")
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                out[name] = file
    return out


def _param_sharding(path: str, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Tensor-parallel placement on a mesh with a ``model`` axis (anything else is replicated).

    Projections into the attention/MLP width are split over their output dim, projections out of it over
    their input dim, and the embedding table over the vocabulary, whenever the dim divides evenly.
    """
    spec: list[Any] = [None] * len(shape)
    if "model" in mesh.axis_names:
        size = mesh.shape["model"]
        leaf = path.split("/")
        axis = None
        if leaf[-1] == "kernel" and leaf[-2] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head"):
            axis = 1
        elif leaf[-1] == "kernel" and leaf[-2] in ("o_proj", "down_proj"):
            axis = 0
        elif leaf[-1] == "embedding":
            axis = 0
        if axis is not None and shape[axis] % size == 0:
            spec[axis] = "model"
    return NamedSharding(mesh, PartitionSpec(*spec))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _unflatten(flat: dict[str, Any], like: dict) -> dict:
    def build(node, prefix):
        return {k: (build(v, f"{prefix}{k}/") if isinstance(v, dict) else flat[f"{prefix}{k}"])
                for k, v in node.items()}
    return build(like, "")


def load_weights(folder: str | os.PathLike, cfg: DecoderConfig, *, dtype=jnp.float32, param_dtype=None,
                 mesh: Mesh | None = None) -> Decoder:
    """Build a :class:`Decoder` for ``cfg`` with weights from the safetensors in ``folder``."""
    from safetensors import safe_open

    folder = Path(folder)
    param_dtype = dtype if param_dtype is None else param_dtype
    abstract = abstract_model(cfg, dtype=dtype, param_dtype=param_dtype)
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    pure = nnx.to_pure_dict(params)
    expected = _flatten(pure)  # our path -> ShapeDtypeStruct
    files = _tensor_files(folder)

    wanted: dict[str, tuple[str, bool]] = {}  # HF name -> (our path, transpose)
    for path in expected:
        wanted[ours_to_hf(path)[0]] = (path, ours_to_hf(path)[1])
    unexpected = []
    for name in files:
        if name in wanted or any(p.match(name) for p in IGNORED_HF_TENSORS):
            continue
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # some tied checkpoints still store the (identical) head
        unexpected.append(name)
    if unexpected:
        mapped = [n for n in unexpected if hf_to_ours(n) is not None]
        why = ("it belongs to a feature this config turns off (bias / q-k norm / untied head)" if mapped
               else "no rule in WEIGHT_MAP maps it")
        raise CheckpointError(f"{folder}: unexpected tensor {unexpected[0]!r} ({why}); "
                              f"{len(unexpected)} unexpected in all: {unexpected[:5]}")
    missing = [name for name in wanted if name not in files]
    if missing:
        raise CheckpointError(f"{folder}: missing tensor {missing[0]!r} (for parameter "
                              f"{wanted[missing[0]][0]!r}); {len(missing)} missing in all: {missing[:5]}")

    loaded: dict[str, jax.Array] = {}
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="numpy") as f:
            for name in names:
                path, transpose = wanted[name]
                array = f.get_tensor(name)
                if transpose:
                    array = array.T
                want = expected[path]
                if tuple(array.shape) != tuple(want.shape):
                    shown = tuple(array.T.shape) if transpose else tuple(array.shape)
                    need = tuple(want.shape)[::-1] if transpose else tuple(want.shape)
                    raise CheckpointError(f"{file.name}: tensor {name!r} has shape {shown}, expected {need} "
                                          f"from config.json")
                array = np.ascontiguousarray(array).astype(want.dtype)
                if mesh is not None:
                    loaded[path] = jax.device_put(array, _param_sharding(path, array.shape, mesh))
                else:
                    loaded[path] = jnp.asarray(array)
    nnx.replace_by_pure_dict(params, _unflatten(loaded, pure))
    return nnx.merge(graphdef, params, rest)


def from_pretrained(folder: str | os.PathLike, dtype=jnp.float32, mesh: Mesh | None = None, *,
                    param_dtype=None):
    """Load ``(model, tokenizer)`` from a Hugging Face folder; tokenizer is None if the folder has none.

    ``dtype`` is the compute dtype and (unless ``param_dtype`` is given) the storage dtype. With ``mesh``
    every weight is placed with a ``NamedSharding`` as it is read (tensor parallel over a ``model`` axis if
    the mesh has one, replicated otherwise).
    """
    cfg = read_config(folder)
    model = load_weights(folder, cfg, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
    return model, load_tokenizer(folder, missing_ok=True)


# --------------------------------------------------------------------------- writing
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
                np.dtype(jnp.bfloat16): "bfloat16"}


def hf_state_dict(model: Decoder) -> dict[str, np.ndarray]:
    """The model's parameters as HF-named numpy arrays in HF layout (``[out, in]`` linear weights)."""
    flat = _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    out = {}
    for path, value in flat.items():
        if "/lora/" in f"/{path}/":
            raise ValueError(f"parameter {path!r} is a LoRA adapter: merge it first (models.lora.merge_lora)")
        name, transpose = ours_to_hf(path)
        array = np.asarray(jax.device_get(value))
        out[name] = np.ascontiguousarray(array.T if transpose else array)
    return out


def save_pretrained(model: Decoder, folder: str | os.PathLike, tokenizer=None, *,
                    max_shard_bytes: int = 4 * 2**30) -> Path:
    """Write ``config.json`` and safetensors (sharded with an index above ``max_shard_bytes``), plus the
    tokenizer if given, so that transformers and vLLM load the folder as this family's ``*ForCausalLM``."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hf_state_dict(model)
    dtype_name = _DTYPE_NAMES.get(next(iter(tensors.values())).dtype, "float32")
    with open(folder / "config.json", "w") as f:
        json.dump(model.config.to_hf(dtype_name), f, indent=2, sort_keys=True)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    for stale in [folder / SAFE_INDEX, *folder.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(folder / SAFE_SINGLE), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        (folder / SAFE_SINGLE).unlink(missing_ok=True)
        total = sum(t.nbytes for t in tensors.values())
        with open(folder / SAFE_INDEX, "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
