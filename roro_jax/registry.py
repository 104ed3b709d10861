"""One small registry of named objects: reward terms, KL and advantage estimators, feature families, outcome
rules, toy worlds.

    KL = Registry("KL estimator")

    @KL.register("k1")            # decorator form
    def k1(logp, ref_logp): ...

    KL.add("k2", k2)              # call form
    KL.get("k9")                  # UnknownNameError: unknown KL estimator 'k9'; registered: ['k1', 'k2']

A registry is a read-only mapping of name -> object (iterate, ``len``, ``in``, ``reg[name]``); registering a
name again replaces the previous object. Config validation (:mod:`roro_jax.config`) reads the names at load
time, so a name registered by user code (a plugin, :mod:`roro_jax.plugins`) is accepted everywhere.
"""

from __future__ import annotations

import weakref

from collections.abc import Mapping
from typing import Callable, Generic, Iterator, TypeVar

from roro_jax.types import InputError

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(InputError, KeyError):
    """A name a registry does not hold; the message lists the registered names. It is an
    :class:`~roro_jax.types.InputError` (``roro`` prints one ``roro: error:`` line) and a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Mapping, Generic[T]):
    """Named objects of one kind (``kind`` names it in errors, e.g. ``"reward term"``)."""

    _instances: list = []  # weak references to every registry (for :func:`snapshot` / :func:`restore`)

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        Registry._instances.append(weakref.ref(self))

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (replacing any previous one); returns ``obj``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj)

    def get(self, name: str) -> T:  # type: ignore[override]  # no default: an unknown name is an error
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {self.names()}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def pop(self, name: str, *default):
        """Remove ``name`` (tests clean up with this); like ``dict.pop``."""
        return self._items.pop(name, *default)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def snapshot() -> list[tuple[Registry, dict]]:
    """Every registry's current contents (a test suite restores them after code that registers names)."""
    return [(r, dict(r._items)) for ref in Registry._instances if (r := ref()) is not None]


def restore(snap: list[tuple[Registry, dict]]) -> None:
    """Put back what :func:`snapshot` saw (registries created since keep their contents)."""
    for reg, items in snap:
        reg._items.clear()
        reg._items.update(items)
