#!/usr/bin/env bash
# `make mutants`: mutation testing (cosmic-ray) of the core modules, each against its fast, relevant tests.
#
# Runs in a scratch copy of the tracked files (the tree itself is never mutated), one mutant at a time,
# niced. Mutants are pruned by scripts/mutants_filter.py (one counterpart per operator site, no
# annotations/docstrings) and, with SAMPLE=N, a seeded sample of N per module is run (SAMPLE=0: all).
# Sessions and reports go to $OUT; the table for benchmarks/RESULTS.md is $OUT/summary.md.
#
# Before its mutants, each module's tests run once on the unmutated copy: if they fail, the script stops
# (with -x every mutant would count as killed). That run also fills a persistent JAX compilation cache
# ($JAX_CACHE, default $OUT/jax-cache) that every mutant's test run reads: XLA programs a mutant does not
# change are not compiled again (the key is the lowered program, so a changed one compiles anew).
#
#   make mutants                          # every module, SAMPLE=40
#   make mutants MODULES="rl/losses" SAMPLE=0
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}                 # the project's venv runs the tests
CR_VENV=${CR_VENV:-$ROOT/.venv-mutants}          # cosmic-ray lives in its own venv
OUT=${OUT:-$ROOT/runs/mutants}
JAX_CACHE=${JAX_CACHE:-$OUT/jax-cache}
SAMPLE=${SAMPLE:-40}
SEED=${SEED:-0}
MODULES=${MODULES:-"rl/losses rl/advantages rl/rewards rubric/gate eval/metrics eval/report worlds/replay rubric/loop"}

declare -A TESTS=(
  [rl/losses]="tests/rl/test_losses.py"
  [rl/advantages]="tests/rl/test_advantages.py"
  [rl/rewards]="tests/rl/test_rewards.py"
  [rubric/gate]="tests/rubric/test_rubric_gate.py"
  [rubric/loop]="tests/rubric/test_rubric_loop.py"
  [eval/metrics]="tests/eval/test_eval_metrics.py tests/eval/test_eval_bootstrap.py"
  [eval/report]="tests/eval/test_eval_report.py"
  [worlds/replay]="tests/worlds/test_replay.py"
)
# worlds/replay: the outcome rules only (the section between these two markers)
declare -A LINES=()
LINES[worlds/replay]=$(awk '/^# Outcome estimation rules/{s=NR} /^# The world/{e=NR} END{print s "-" e}' \
  "$ROOT/roro_jax/worlds/replay.py")

if [ ! -x "$CR_VENV/bin/cosmic-ray" ]; then
  python3 -m venv "$CR_VENV"
  "$CR_VENV/bin/python" -m pip install -q "cosmic-ray==8.7.0"
fi
mkdir -p "$OUT" "$JAX_CACHE"
JAX_CACHE=$(cd "$JAX_CACHE" && pwd)
JAX_ENV="JAX_COMPILATION_CACHE_DIR=$JAX_CACHE JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0"
WORK=$(mktemp -d /tmp/roro-mutants.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# -P: tracked symlinks (roro_jax/configs, roro_jax/benchmarks) are copied as links
(cd "$ROOT" && git ls-files -z | xargs -0 cp -P --parents -t "$WORK")
cd "$WORK"

sessions=()
for m in $MODULES; do
  name=${m//\//_}
  cfg="$OUT/$name.toml"
  test_cmd="env $JAX_ENV nice -n 10 $PY -m pytest -x -q -p no:cacheprovider -p no:randomly ${TESTS[$m]}"
  session="$OUT/$name.sqlite"
  cat > "$cfg" <<EOF
[cosmic-ray]
module-path = "roro_jax/$m.py"
timeout = 600.0
excluded-modules = []
test-command = "$test_cmd"

[cosmic-ray.distributor]
name = "local"
EOF
  rm -f "$session"
  "$CR_VENV/bin/cosmic-ray" init "$cfg" "$session"
  lines=${LINES[$m]:-}
  "$CR_VENV/bin/python" "$ROOT/scripts/mutants_filter.py" prune "$session" --module "roro_jax/$m.py" \
    ${lines:+--lines "$lines"} --sample "$SAMPLE" --seed "$SEED"
  start=$(date +%s)
  if ! $test_cmd > "$OUT/$name.baseline.txt" 2>&1; then
    echo "mutants: $m: the tests fail on the unmutated code (see $OUT/$name.baseline.txt); not running its mutants" >&2
    exit 1
  fi
  echo "$m: baseline (unmutated) $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
  start=$(date +%s)
  "$CR_VENV/bin/cosmic-ray" exec "$cfg" "$session"
  echo "$m: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
  "$CR_VENV/bin/cr-report" "$session" --show-pending > "$OUT/$name.report.txt" || true
  sessions+=("$session")
done
"$CR_VENV/bin/python" "$ROOT/scripts/mutants_filter.py" summary --markdown "${sessions[@]}" | tee "$OUT/summary.md"
