"""Every fenced code block of README.md runs (issue 17).

A block is ```bash or ```python. A block that cannot run here (it needs vLLM servers, two hosts, a
long-running viewer) is preceded by ``<!-- readme-test: skip: REASON -->``; any other language, or a block
without one, fails :func:`test_every_block_is_runnable_or_says_why_not`.

Shell blocks run command by command, in a fresh folder outside the checkout (as a user of an installed
package would: ``configs/NAME.yaml`` resolves to the shipped config), with the package importable:

* ``roro ARGS`` runs ``python -m roro_jax.cli ARGS`` plus a few overrides that make it cheap (:func:`cheap`):
  tiny problem counts, one update, one λ. These come last, so they win; the README's own keys still run.
* ``make TARGET`` runs the target's recipe as ``make -n`` prints it (its venv steps taken as done), with
  ``.venv/bin/roro`` / ``.venv/bin/python`` replaced by this interpreter, in the same cheap form
  (``make test`` runs the suite's runner on one small test file).

Python blocks run as a script in a fresh process. Each command must exit with status 0.

A python block preceded by ``<!-- readme-test: file: NAME.py -->`` is also a file the README asks the reader
to save (a plugin module): it is written as ``NAME.py`` into the folder of every shell block after it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from roro_jax.paths import REPO_ROOT, shared_data_dir

README = REPO_ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(.+?)\s*-->")
FILE = re.compile(r"<!--\s*readme-test:\s*file:\s*([\w.-]+\.py)\s*-->")
RUNNABLE = ("bash", "python")

TOY = ["toy.explore_problems=8", "toy.test_problems=16", "toy.queries_per_update=2", "toy.max_batch=32",
       "grpo.group_size=4", "grpo.minibatches=2", "train.updates=1", "sweep.lambda_c=[0.3]",
       "sweep.random_rates=[0.3]", "sweep.thresholds=[0.99]", "sweep.gammas=[0.5]",
       "exploration.random_rates=[0.3]", "exploration.thresholds=[0.99]", "exploration.critical_k=[1]",
       "exploration.anti_k=[1]", "rubric.rounds=1", "rubric.judge.steps=4", "rubric.rubricor.sft_steps=4",
       "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=2", "rubric.rubricor.max_new_tokens=48",
       "rubric.gate.min_pairs=1", "eval.n_boot=20"]
SYNTHETIC = ["train.updates=2", "synthetic.queries=8", "router.hidden=[16]"]
REPLAY = ["train.updates=1", "sweep.lambda_c=[0.3]", "sweep.random_rates=[0.3]", "sweep.gammas=[0.5]",
          "sweep.thresholds=[0.5]", "replay.queries_per_update=4", "grpo.group_size=4", "grpo.minibatches=2",
          "replay.extra_test=[]", "rubric.rounds=1", "rubric.judge.steps=4", "rubric.rubricor.sft_steps=4",
          "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=2", "rubric.rubricor.max_new_tokens=48",
          "rubric.gate.min_pairs=1", "eval.n_boot=20"]
BENCH = ["--trajectories", "32", "--steps", "8", "--repeats", "1", "--sweep"]
PYTEST_SMALL = ["tests/rl/test_advantages.py"]


def blocks() -> list[tuple[int, str, str, str | None]]:
    """``(line, language, code, skip reason)`` of every fenced block."""
    out, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i + 1, m.group(1)
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.search(prev)
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        out.append((start, lang, "\n".join(lines[i + 1:j]), skip.group(1) if skip else None))
        i = j + 1
    return out


BLOCKS = blocks()
RUN = [b for b in BLOCKS if b[3] is None]


def saved_files(before_line: int) -> dict[str, str]:
    """``{name: code}`` of the ``readme-test: file:`` blocks above README line ``before_line``."""
    lines, out = README.read_text().splitlines(), {}
    for line, lang, code, _ in BLOCKS:
        if line >= before_line:
            break
        prev = next((lines[k] for k in range(line - 2, -1, -1) if lines[k].strip()), "")
        m = FILE.search(prev)
        if m and lang == "python":
            out[m.group(1)] = code + "\n"
    return out


def test_every_block_is_runnable_or_says_why_not():
    assert len(BLOCKS) >= 8
    for line, lang, code, skip in BLOCKS:
        assert lang in RUNNABLE, f"README.md:{line}: a ```{lang} block; use bash or python (or a skip marker)"
        assert skip is None or len(skip) > 10, f"README.md:{line}: say why the block cannot run here"
    assert len(RUN) >= 6


def cheap(args: list[str]) -> list[str]:
    """Extra arguments that make a README command cheap (appended, so they win)."""
    if not args:
        return []
    cmd, text = args[0], " ".join(args)
    if cmd == "bench":
        return BENCH if args[1:2] == ["router-step"] else []
    if cmd in ("config", "pairs") or (cmd == "eval" and "--points" in args):
        return []
    if "router_synthetic.yaml" in text:
        return SYNTHETIC
    if "replay_math500.yaml" in text:
        return REPLAY
    if cmd in ("demo", "collect", "rubric", "router", "eval"):  # the toy world (demo.yaml)
        return (["--quick"] if cmd == "demo" and "--quick" not in args else []) + TOY
    raise AssertionError(f"no cheap form for `roro {text}`")


def commands(code: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", code)
    return [t for t in (shlex.split(ln, comments=True) for ln in joined.splitlines()) if t]


def make_recipe(target_args: list[str]) -> list[list[str]]:
    """The commands ``make`` would run for a target, the venv steps taken as done."""
    stamps = [x for s in (".venv/.installed", ".venv/.installed-dev", ".venv/bin/python") for x in ("-o", s)]
    # Under an outer make (CI runs the suite from `make test`) MAKELEVEL/MAKEFLAGS make the inner one print
    # "make[1]: Entering directory ..." lines, which are not commands: drop both and ask for no such lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "-n", "--no-print-directory", *stamps, *target_args], capture_output=True,
                         text=True, cwd=REPO_ROOT, check=True, env=env)
    return [shlex.split(ln) for ln in out.stdout.splitlines() if ln.strip()]


def to_process(tokens: list[str]) -> tuple[list[str], Path | None]:
    """``(argv, cwd)``: cwd None = the block's fresh folder."""
    if tokens[0] in ("roro", ".venv/bin/roro"):
        return [sys.executable, "-m", "roro_jax.cli", *tokens[1:], *cheap(tokens[1:])], None
    if tokens[:3] == [".venv/bin/python", "-m", "pytest"]:
        return [sys.executable, "-m", "pytest", *tokens[3:], "-p", "no:cacheprovider", *PYTEST_SMALL], REPO_ROOT
    raise AssertionError(f"README command not understood by the README test: {shlex.join(tokens)}")


def run_shell(code: str, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    for tokens in commands(code):
        expanded = make_recipe(tokens[1:]) if tokens[0] == "make" else [tokens]
        for t in expanded:
            argv, cwd = to_process(t)
            out = subprocess.run(argv, capture_output=True, text=True, cwd=cwd or work, env=env, timeout=1500)
            assert out.returncode == 0, f"`{shlex.join(t)}` -> {shlex.join(argv)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


def _marks(b):
    needs_shared = "replay_math500" in b[2]
    return [pytest.mark.shared_data] if needs_shared else []


@pytest.mark.slow
@pytest.mark.parametrize("line,lang,code", [pytest.param(b[0], b[1], b[2], id=f"README.md:{b[0]}", marks=_marks(b))
                                            for b in RUN])
def test_readme_block_runs(line, lang, code, tmp_path):
    if "replay_math500" in code:
        assert shared_data_dir().exists()
    if lang == "python":
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        return
    for name, text in saved_files(line).items():
        (tmp_path / name).write_text(text)
    if "examples/" in code:  # commands that load the checkout's examples/ (a user who cloned the repository)
        shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    run_shell(code, tmp_path)
