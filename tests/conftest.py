"""Test-suite wiring: the ``shared_data`` group runs only where ../shared/data exists."""

import os

# Multi-device code is tested on simulated CPU devices; must be set before JAX initialises.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# One persistent XLA compilation cache for the run and for the processes the tests start (they inherit the
# environment): many tests build the same program anew (a fresh jit of the same update, a CLI run in a
# subprocess), and each distinct program then compiles once (about a third less CPU time on the rubric
# and update tests, and reruns start warm). The key is the lowered program, the backend, the flags and the
# JAX version, so a changed program compiles anew. RORO_TEST_JAX_CACHE=off turns it off; a path moves it.
_jax_cache = os.environ.get("RORO_TEST_JAX_CACHE", "")
if _jax_cache != "off":
    from pathlib import Path

    _jax_cache = _jax_cache or str(Path(__file__).resolve().parents[1] / ".cache" / "jax-tests")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _jax_cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # A size bound turns on JAX's file lock around every cache read and write: the suite's workers
    # (pytest-xdist, `make test`) and the processes the tests start share the folder, and an unlocked
    # write can be read half-written by another process.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import pytest

from roro_jax.paths import shared_data_dir


# `make test` runs the suite in pytest-xdist workers with `--dist loadfile --no-loadscope-reorder`: a test file
# runs on one worker (its module fixtures are built once), and files are handed out in collection order
# (without `--no-loadscope-reorder`, xdist orders them by their number of tests). The files of LONGEST_FIRST
# (the longest, measured with `--durations` on 2 cores) come first, so no worker is left with a long file
# at the end while the other idles (measured: benchmarks/RESULTS.md, "CI time").
LONGEST_FIRST = ("tests/engines/test_fused_routing.py", "tests/test_readme.py", "tests/test_cli.py",
                 "tests/rubric/test_rubric_loop.py", "tests/pipelines/test_toy_pipeline.py",
                 "tests/rl/test_multiprocess.py", "tests/pipelines/test_study.py", "tests/rubric/test_rubric_rubricor.py",
                 "tests/rl/test_kl_reference.py", "tests/test_examples.py", "tests/models/test_sampler.py",
                 "tests/rubric/test_rubric_judge.py", "tests/rl/test_update.py", "tests/pipelines/test_replay_pipeline.py",
                 "tests/rl/test_faults.py", "tests/models/test_score.py")


def longest_first(items) -> None:
    """Put the LONGEST_FIRST files first, in that order; the others follow in collection order (a stable
    sort: a file's tests keep their order and stay together)."""
    rank = {f: i for i, f in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(it.nodeid.split("::", 1)[0], len(rank)))


def pytest_collection_modifyitems(config, items):
    longest_first(items)
    if shared_data_dir().exists():
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("shared_data") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        msg = (f"NOTICE: {len(dropped)} tests of the 'shared_data' group deselected: "
               f"{shared_data_dir()} does not exist (set RORO_SHARED_DATA to run them)")
        config._roro_notice = msg


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    msg = getattr(config, "_roro_notice", None)
    if msg:
        terminalreporter.write_line(msg, yellow=True)


@pytest.fixture(scope="session")
def shared_data():
    return shared_data_dir()


@pytest.fixture
def one_error(capsys):
    """Read the captured stderr: exactly one ``roro: error:`` line, no traceback; returns that line."""
    def read() -> str:
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("roro:")]
        assert len(lines) == 1 and lines[0].startswith("roro: error: "), err
        assert "Traceback" not in err
        return lines[0]
    return read


@pytest.fixture(scope="module", autouse=True)
def _registries_restored_after_each_module():
    """Names a test module registers (plugins, examples) do not leak into the next module: every registry
    is put back as it was, and plugin modules imported from files are forgotten (so a later load of the same
    file registers its names again)."""
    import sys

    from roro_jax.registry import restore, snapshot

    saved, modules = snapshot(), set(sys.modules)
    yield
    restore(saved)
    import tempfile

    from roro_jax.paths import REPO_ROOT

    # user code: the examples and plugin files a test wrote to a temporary folder; never the installed
    # packages or the project's own modules, which a clone under /tmp (CI) also places in the temporary
    # folder (forgetting torch made its next import crash the process)
    user_dirs = (str(REPO_ROOT / "examples"), tempfile.gettempdir())
    keep = tuple({sys.prefix, sys.base_prefix, *(str(REPO_ROOT / d) for d in ("roro_jax", "pipelines", "tests"))})
    for name in set(sys.modules) - modules:
        f = str(getattr(sys.modules.get(name), "__file__", None) or "")
        if f.startswith(str(REPO_ROOT / "examples")) or (f.startswith(user_dirs) and not f.startswith(keep)):
            sys.modules.pop(name, None)
