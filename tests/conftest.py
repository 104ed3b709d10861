"""Test-suite wiring: the ``shared_data`` group runs only where ../shared/data exists."""

import os

# Multi-device code is tested on simulated CPU devices; must be set before JAX initialises.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest

from roro_jax.paths import shared_data_dir


def pytest_collection_modifyitems(config, items):
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
