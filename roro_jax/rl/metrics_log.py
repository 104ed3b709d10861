"""Where a training run's per-update scalars go: ``<out_dir>/metrics.jsonl`` and, optionally, TensorBoard.

One :class:`MetricsLog` row per update: ``{"update": k, "time": unix time, "wall_s": seconds since this
process started the run, "step_s": seconds of this update (collection + update, to the host), "devices":
devices of the update, "mode": parallel mode, <diagnostics and losses>}``. With
``logging.tensorboard=true`` every numeric field except ``update`` is also written as a TensorBoard scalar
at step ``update`` (``tensorboardX``, the ``tensorboard`` extra), into ``logging.tensorboard_dir`` (default
``<out_dir>/tensorboard``); open it with ``tensorboard --logdir <out_dir>/tensorboard``. A resumed run
purges the TensorBoard events after the restored update, as the JSONL log drops its lines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from roro_jax.config import ConfigError

TENSORBOARD_EXTRA = "pip install 'roro_jax[tensorboard]'  (or: pip install tensorboardX)"


def check_tensorboard(cfg) -> None:
    """:class:`ConfigError` naming ``logging.tensorboard`` when it is on and ``tensorboardX`` is missing."""
    if not cfg.logging.tensorboard:
        return
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ConfigError("config key 'logging.tensorboard' is true but tensorboardX is not installed: "
                          f"{TENSORBOARD_EXTRA}, or set logging.tensorboard=false") from None


def tensorboard_dir(cfg) -> Path:
    return Path(cfg.logging.tensorboard_dir or Path(cfg.out_dir) / "tensorboard")


class MetricsLog:
    """Append rows to ``path`` (one JSON line each, flushed) and, if ``cfg.logging.tensorboard``, to a
    TensorBoard ``SummaryWriter``. ``start``: the update the run (re)starts after (TensorBoard purges later
    events)."""

    def __init__(self, path: Path, cfg, start: int = 0):
        check_tensorboard(cfg)
        self._file = Path(path).open("a")
        self._tb = None
        if cfg.logging.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir(cfg)), purge_step=start + 1 if start else None)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(row["update"])
            for k, v in row.items():
                if k != "update" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
