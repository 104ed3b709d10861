"""A training run's folder, made auditable: the resolved config it ran with, and what a resume may change.

``<out_dir>/config.yaml`` holds the resolved config of the run (written when a run starts or resumes).
Resuming with a config that differs in a key that changes training is refused with one
:class:`~roro_jax.config.ConfigError` listing every differing key, its saved and its current value, unless
``checkpoint.allow_config_change=true`` (the ``--allow-config-change`` flag of ``roro router`` /
``roro demo`` / ``roro eval``). Keys that cannot change what a run computes (how far it runs, where it
writes, logging, evaluation and sweep settings, the process's place in a multi-process run) may change
freely: :data:`FREE_KEYS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from roro_jax.config import ConfigError
from roro_jax.jsonio import atomic_write_text

RUN_CONFIG = "config.yaml"

# dotted keys (or prefixes ending in ".") that a resumed run may change
FREE_KEYS = ("out_dir", "train.updates", "checkpoint.", "logging.", "eval.", "sweep.",
             "toy.test_problems", "live.test_problems", "live.test_benchmark", "replay.extra_test",
             "parallel.coordinator", "parallel.process_id", "parallel.num_processes",
             "plugins")  # plugins only register names; the keys that use them (reward.weights.X, ...) are compared
# keys a run folder saved before they left the schema (they never changed what a run computed); a resume
# ignores their saved values
REMOVED_KEYS = ("router.topk", "train.log_every")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: _plain(d)}


def _plain(v: Any) -> Any:
    """Tuples (dataclass defaults) and lists (read back from YAML) compare equal."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _free(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE_KEYS)


def resolved(cfg) -> dict[str, Any]:
    """The config as plain, YAML-safe Python containers."""
    return _plain_tree(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


def _plain_tree(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _plain_tree(v) for k, v in d.items()}
    return _plain(d)


def config_changes(saved: dict[str, Any], cfg) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every key that differs and is not in :data:`FREE_KEYS`.
    A key the saved config lacks (added to the schema after the run started, e.g. ``grpo.reference``) counts
    as its default; a key that left the schema since (:data:`REMOVED_KEYS`) is ignored."""
    a = {k: v for k, v in _flat(saved).items() if k not in REMOVED_KEYS}
    b = _flat(resolved(cfg))
    a = {**{k: v for k, v in _flat(resolved(type(cfg)())).items() if k in b}, **a}
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if not _free(k) and a.get(k, "<absent>") != b.get(k, "<absent>")]


def read_run_config(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # noqa: BLE001 - any unreadable saved config is reported as one line
        raise ConfigError(f"{path}: the run's saved config cannot be read ({str(e).splitlines()[0]}); "
                          "restore it, or pass --fresh to start the run over") from None
    return data if isinstance(data, dict) else None


def check_resume_config(cfg, out_dir: str | os.PathLike) -> list[tuple[str, Any, Any]]:
    """Raise :class:`ConfigError` if the run in ``out_dir`` was made with a config that differs from ``cfg``
    in a training key (unless ``cfg.checkpoint.allow_config_change``); returns the changes."""
    saved = read_run_config(out_dir)
    if saved is None:
        return []
    changes = config_changes(saved, cfg)
    if changes and not cfg.checkpoint.allow_config_change:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)
        raise ConfigError(f"{Path(out_dir)} holds a run made with another config ({len(changes)} key"
                          f"{'s' if len(changes) > 1 else ''} differ: {listed}); pass --fresh to start over, "
                          "--allow-config-change (checkpoint.allow_config_change=true) to resume anyway, or "
                          "use another out_dir")
    return changes


def save_run_config(cfg, out_dir: str | os.PathLike) -> Path:
    """Write the resolved ``cfg`` to ``<out_dir>/config.yaml`` atomically."""
    return atomic_write_text(Path(out_dir) / RUN_CONFIG, OmegaConf.to_yaml(OmegaConf.create(resolved(cfg))))
