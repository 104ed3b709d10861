"""What every benchmark (``roro bench ...``, ``benchmarks/``) records about the machine, and its progress bars.

Ratios against a baseline in the same run are only as good as the machine was quiet: another job on the
cores slows the two sides unequally (PyTorch's threads collapse first). :func:`machine` records the CPU
model, the core count and the load average at the start and at the end of the run; when the load is above
the core count, the result carries ``warning`` ("ratios are unreliable") and the printed line says so.
Progress bars (tqdm) go to stderr, so ``--json`` output on stdout stays one JSON object.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """``{"cpu_model", "cores", "load_avg"}`` now."""
    return {"cpu_model": cpu_model(), "cores": cores(), "load_avg": load_average()}


def load_warning(loads: Iterable[list[float] | None], n_cores: int) -> str | None:
    """A warning when a 1-minute load average seen during the run exceeds the core count."""
    worst = max((x[0] for x in loads if x), default=None)
    if worst is None or worst <= n_cores:
        return None
    return (f"load average {worst:.2f} > {n_cores} cores during the run: other jobs share the CPU, so the "
            "ratios are unreliable (rerun on a quiet machine)")


def annotate(result: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """Add ``machine`` (``start`` from :func:`machine` before the run; the load at the end too) and, when
    the load exceeded the cores, ``warning``; also print the warning to stderr. Returns ``result``."""
    end = load_average()
    info = {**start, "load_avg_end": end}
    result["machine"] = info
    warning = load_warning([start.get("load_avg"), end], start["cores"])
    if warning:
        result["warning"] = warning
        print(f"warning: {warning}", file=sys.stderr)
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One printed line: CPU, cores, load at start/end and the warning if any."""
    m = result.get("machine", {})
    line = (f"machine: {m.get('cpu_model')}, {m.get('cores')} cores, load average {m.get('load_avg')} at start, "
            f"{m.get('load_avg_end')} at end")
    return line + (f"; WARNING: {result['warning']}" if result.get("warning") else "")


def progress(it: Iterable[T], desc: str, total: int | None = None, disable: bool = False) -> Iterable[T]:
    """A tqdm bar on stderr (stdout stays for the result)."""
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, file=sys.stderr, disable=disable, leave=False)
