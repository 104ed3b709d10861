"""A package's public names, imported on first use (PEP 562).

A package lists ``{name: submodule}`` and gets a module ``__getattr__`` and ``__dir__``: ``import
roro_jax.rl`` stays cheap (no JAX, no submodule), and ``from roro_jax.rl import make_update`` imports
only ``roro_jax.rl.update``. The package's own submodules resolve as attributes too
(``roro_jax.rl.losses`` without importing it first)::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"make_update": "update", ...}, ("update", ...))
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(package: str, table: Mapping[str, str], submodules: Sequence[str] = ()
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: each name of ``table`` is the attribute of the
    same name of ``package.<table[name]>``, looked up at its first access and then kept in the package.
    A name may not be one of ``submodules`` (importing the submodule would replace it)."""
    clash = sorted(set(table) & set(submodules))
    if clash:
        raise ValueError(f"{package}: public names {clash} are also submodule names")
    names = sorted(table)

    def __getattr__(name: str) -> Any:
        pkg = importlib.import_module(package)
        if name in table:
            value = getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(pkg, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(names) | set(submodules))

    return __getattr__, __dir__, names
