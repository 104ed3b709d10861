"""User code loaded by name: modules that register reward terms, KL or advantage estimators, feature
families, outcome rules or toy worlds (:mod:`roro_jax.registry`) before a config is validated.

Three ways, all imported before the config's names are checked:

- ``roro ... --plugin my_module`` (repeatable; a module name importable from the current folder or the
  Python path, or a path to a ``.py`` file);
- ``plugins: [my_module]`` in a config (or ``plugins=[my_module]`` on the command line);
- an installed package's entry point in the group ``roro_jax.plugins`` (``[project.entry-points."roro_jax.plugins"]
  mine = "my_package.roro_plugin"`` in its ``pyproject.toml``), loaded by every ``roro`` command.

A plugin that fails to import is a :class:`PluginError` (one ``roro: error:`` line naming the module).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

from roro_jax.types import InputError

ENTRY_POINT_GROUP = "roro_jax.plugins"

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "load_entry_points", "load_plugin", "load_plugins"]


class PluginError(InputError):
    """A plugin module could not be imported; the message names it and the cause."""


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).splitlines())}"


def _from_file(path: Path) -> ModuleType:
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise ImportError(f"not a Python module file: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_plugin(name: str) -> ModuleType:
    """Import the plugin ``name`` (a module name, or a path to a ``.py`` file) once; returns the module."""
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"plugin {name!r}: not a module name")
    try:
        if name.endswith(".py"):
            return _from_file(Path(name))
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())  # a module next to the user's config, as `python -m` would find it
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure in user code is reported as one line naming it
        raise PluginError(f"plugin {name!r} failed to import: {_why(e)}") from None


def load_plugins(names: Sequence[str]) -> list[ModuleType]:
    """Import every plugin of ``names`` in order (a module already imported is not run again)."""
    return [load_plugin(n) for n in names]


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[ModuleType]:
    """Load every installed entry point of ``group`` (packages that extend roro_jax)."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        try:
            loaded.append(ep.load())
        except Exception as e:  # noqa: BLE001
            raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}, group {group}) failed to import: "
                              f"{_why(e)}") from None
    return loaded
