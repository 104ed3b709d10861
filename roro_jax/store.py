"""Append-only trajectory store: one JSON line per :class:`~roro_jax.types.Trajectory`.

A collection writes each finished trajectory with :meth:`TrajectoryStore.add` and, after an interruption,
asks :meth:`TrajectoryStore.missing` which trajectories are still to do, so a resumed collection ends with
every expected trajectory exactly once::

    store = TrajectoryStore("runs/collect/trajectories.jsonl")
    todo = store.missing((q.id, g, policy.policy_id) for q in problems for g in range(G))
    ...
    store.add(traj)              # False (nothing written) when its key is already stored

Guarantees:

* **Key.** A trajectory is identified by ``(query_id, sample_idx, policy_id)`` (its ``traj_id`` is the
  same triple as a string). Adding a key that is already stored writes nothing and returns ``False``
  (``on_duplicate="ignore"``, the default) or raises :class:`DuplicateTrajectoryError`
  (``on_duplicate="error"``). The check is made under an exclusive ``flock`` after catching up with
  lines that other processes appended, so several writers on one file never duplicate a key either.
* **Durability.** Each :meth:`add` is one ``write`` of the whole line followed by ``fsync`` (
  :meth:`add_many` writes its lines and fsyncs once). A record either is completely in the file or is
  a torn last line. :meth:`add` refuses (:class:`~roro_jax.types.RecordError`, nothing written) a
  trajectory whose record the readers would reject, e.g. one with NaN features.
* **Crash recovery.** A torn last line (no trailing newline, or a last line that is not valid JSON) is
  the only damage a crash can leave. Readers (:meth:`iter`) skip it with a warning; the first index build
  by a writer-side call (:meth:`add`, :meth:`keys`, :meth:`missing`, ``in``, ``len``) truncates it away
  with a warning, so the trajectory it held is reported missing and collected again, never duplicated.
  Anything else is corruption that a crash cannot cause and raises :class:`StoreCorruptError` naming
  ``file:line`` (and the field): an undecodable line that is *not* the last one, a blank line, and any
  complete JSON line that is not a valid record (a missing field, a wrong type, NaN features, ... see
  :func:`~roro_jax.types.check_trajectory_record`), last line included. Writer-side index builds check
  only the key fields; :meth:`iter` checks whole records.
* **Memory.** :meth:`iter` streams line by line: memory stays flat whatever the file size. The key
  index (built lazily, on first need) holds only the keys, about 100-200 bytes per trajectory.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from roro_jax.jsonio import atomic_open, decode_line
from roro_jax.types import InputError, RecordError, Trajectory, check_trajectory_record

Key = tuple[str, int, str]  # (query_id, sample_idx, policy_id)

__all__ = ["DuplicateTrajectoryError", "Key", "StoreCorruptError", "TrajectoryStore", "key_of", "read_trajectory_file"]


class StoreCorruptError(InputError):
    """A line of the store is not a valid trajectory record (and is not a torn last line)."""


class DuplicateTrajectoryError(ValueError):
    """``add`` of a key that is already stored, with ``on_duplicate="error"``."""


def key_of(x: Trajectory | dict[str, Any] | tuple) -> Key:
    """The store key ``(query_id, sample_idx, policy_id)`` of a trajectory, its dict, or a key tuple."""
    if isinstance(x, Trajectory):
        return (str(x.query_id), int(x.sample_idx), str(x.policy_id))
    if isinstance(x, dict):
        check_key_fields(x)
        return (x["query_id"], x["sample_idx"], x["policy_id"])
    if isinstance(x, (tuple, list)) and len(x) == 3:
        return (str(x[0]), int(x[1]), str(x[2]))
    raise TypeError(f"not a trajectory key: {x!r} (expected (query_id, sample_idx, policy_id))")


def check_key_fields(d: Any) -> None:
    """Raise :class:`~roro_jax.types.RecordError` naming the field unless ``d`` is a JSON object whose key
    fields are valid (the other fields are not looked at)."""
    if isinstance(d, dict):
        d = {k: d[k] for k in ("query_id", "sample_idx", "policy_id") if k in d}
    check_trajectory_record(d)


class TrajectoryStore:
    """Append-only JSONL store of trajectories keyed by ``(query_id, sample_idx, policy_id)``.

    Args:
      path: the JSONL file (created, with its parent folders, on the first :meth:`add`).
      on_duplicate: ``"ignore"`` (``add`` returns False and writes nothing) or ``"error"``.
      fsync: fsync after every append (default True; tests of throughput may turn it off).
    """

    def __init__(self, path: str | os.PathLike, *, on_duplicate: str = "ignore", fsync: bool = True):
        if on_duplicate not in ("ignore", "error"):
            raise ValueError(f"on_duplicate must be 'ignore' or 'error', got {on_duplicate!r}")
        self.path = Path(path)
        self.on_duplicate = on_duplicate
        self.fsync = fsync
        self._keys: set[Key] | None = None  # built lazily
        self._indexed_to = 0  # byte offset up to which self._keys reflects the file

    # ------------------------------------------------------------------ reading
    def iter(self, *, as_dict: bool = False) -> Iterator[Trajectory | dict[str, Any]]:
        """Stream the stored trajectories in file order (never loads the whole file).

        A torn last line is skipped with a warning (the file is not modified). Any other bad line (see the
        module docstring) raises :class:`StoreCorruptError` naming ``path:line`` and the field.
        """
        for _, rec in self._iter_numbered(as_dict):
            yield rec

    def _iter_numbered(self, as_dict: bool = False) -> Iterator[tuple[int, Trajectory | dict[str, Any]]]:
        """:meth:`iter` with each record's line number."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            prev: tuple[int, bytes] | None = None
            lineno = 0
            for line in f:
                lineno += 1
                if prev is not None:
                    yield prev[0], self._decode(prev[1], prev[0], as_dict, last=False)
                prev = (lineno, line)
            if prev is not None:
                lineno, line = prev
                rec = self._decode(line, lineno, as_dict, last=True)
                if rec is not None:
                    yield lineno, rec

    def __iter__(self) -> Iterator[Trajectory]:
        return self.iter()  # type: ignore[return-value]

    def _decode(self, line: bytes, lineno: int, as_dict: bool, *, last: bool):
        complete = line.endswith(b"\n")
        if not line.strip():
            if last and not complete and line:
                warnings.warn(f"{self.path}:{lineno}: torn last line skipped", RuntimeWarning, stacklevel=3)
            if last:
                return None
            raise StoreCorruptError(f"{self.path}:{lineno}: blank line inside the store")
        try:
            if not complete:
                raise ValueError("no trailing newline")
            d = decode_line(line)
        except ValueError as e:  # incl. invalid UTF-8
            if last:
                warnings.warn(f"{self.path}:{lineno}: torn last line skipped ({e})", RuntimeWarning,
                              stacklevel=3)
                return None
            raise StoreCorruptError(f"{self.path}:{lineno}: not a trajectory record: {e}") from None
        try:
            traj = Trajectory.from_dict(d)
        except (ValueError, TypeError) as e:  # a complete JSON line: never a torn write
            raise StoreCorruptError(f"{self.path}:{lineno}: not a trajectory record: {e}") from None
        return d if as_dict else traj

    def get(self, key) -> Trajectory | None:
        """The stored trajectory with ``key`` (a linear scan; for occasional look-ups)."""
        k = key_of(key)
        for d in self.iter(as_dict=True):
            if key_of(d) == k:
                return Trajectory.from_dict(d)  # type: ignore[arg-type]
        return None

    # ------------------------------------------------------------------ index
    def _catch_up(self, fd: int | None = None) -> None:
        """Bring the key index up to the file's end; truncate a torn tail (caller holds the lock when
        ``fd`` is given; without ``fd`` the lock is taken here)."""
        if not self.path.exists():
            if self._keys is None:
                self._keys = set()
            self._indexed_to = 0
            return
        if fd is None:
            if self._keys is not None and self.path.stat().st_size == self._indexed_to:
                return  # nothing appended since the last look (the common case of `key in store`)
            with self._locked() as lfd:
                return self._catch_up(lfd)
        size = os.fstat(fd).st_size
        if self._keys is None:
            self._keys, self._indexed_to = set(), 0
        if size < self._indexed_to:
            # The file shrank under us (compacted or torn tail truncated by another process): rebuild.
            self._keys, self._indexed_to = set(), 0
        if size == self._indexed_to:
            return
        with open(self.path, "rb") as f:
            f.seek(self._indexed_to)
            offset = self._indexed_to
            lineno_base = None  # line numbers only needed for error messages: computed on demand
            pending: list[tuple[int, bytes]] = []
            for line in f:
                if pending:
                    self._index_line(*pending.pop(), last=False, lineno_base=lineno_base)
                pending.append((offset, line))
                offset += len(line)
            if pending:
                start, line = pending.pop()
                if not self._index_line(start, line, last=True, lineno_base=lineno_base):
                    warnings.warn(f"{self.path}: torn last record at byte {start} "
                                  f"({len(line)} bytes) truncated; it will be reported missing",
                                  RuntimeWarning, stacklevel=4)
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                    offset = start
        self._indexed_to = offset

    def _index_line(self, start: int, line: bytes, *, last: bool, lineno_base) -> bool:
        try:
            if not line.endswith(b"\n"):
                raise ValueError("no trailing newline")
            if not line.strip():
                raise ValueError("blank line")
            d = decode_line(line)
        except ValueError as e:
            if last:
                return False
            raise StoreCorruptError(f"{self.path}:{self._lineno_at(start)}: not a trajectory record: {e}") from None
        try:
            check_key_fields(d)  # also rejects a list, which key_of would take for a key tuple
            k = key_of(d)
        except ValueError as e:  # a complete JSON line: never truncated as torn
            raise StoreCorruptError(f"{self.path}:{self._lineno_at(start)}: not a trajectory record: {e}") from None
        self._keys.add(k)  # type: ignore[union-attr]
        return True

    def _lineno_at(self, offset: int) -> int:
        n = 1
        with open(self.path, "rb") as f:
            remaining = offset
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                n += chunk.count(b"\n")
                remaining -= len(chunk)
        return n

    class _Lock:
        def __init__(self, path: Path):
            self.path = path

        def __enter__(self) -> int:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            return self.fd

        def __exit__(self, *exc) -> None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)

    def _locked(self) -> "_Lock":
        return TrajectoryStore._Lock(self.path)

    def keys(self) -> set[Key]:
        """A copy of the stored keys (index caught up with the file first)."""
        self._catch_up()
        return set(self._keys or ())

    def __contains__(self, key) -> bool:
        self._catch_up()
        return key_of(key) in (self._keys or ())

    def __len__(self) -> int:
        self._catch_up()
        return len(self._keys or ())

    def missing(self, expected: Iterable) -> list[Key]:
        """The keys of ``expected`` (trajectories, dicts or key tuples) that are not stored, in the given
        order, each once."""
        self._catch_up()
        have = self._keys or set()
        out, seen = [], set()
        for x in expected:
            k = key_of(x)
            if k not in have and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    # ------------------------------------------------------------------ writing
    def add(self, traj: Trajectory) -> bool:
        """Append ``traj`` durably; returns False (nothing written) if its key is already stored and
        ``on_duplicate == "ignore"``, raises :class:`DuplicateTrajectoryError` with ``"error"``."""
        return self.add_many([traj]) == 1

    def add_many(self, trajs: Iterable[Trajectory]) -> int:
        """Append several trajectories under one lock and one fsync; returns how many were written.
        Duplicates (of stored keys or within ``trajs``) follow ``on_duplicate``."""
        trajs = list(trajs)
        if not trajs:
            return 0
        with self._locked() as fd:
            self._catch_up(fd)
            assert self._keys is not None
            lines, new, new_set = [], [], set()
            for t in trajs:
                if not isinstance(t, Trajectory):
                    raise TypeError(f"TrajectoryStore.add: expected a Trajectory, got {type(t).__name__}")
                k = key_of(t)
                if k in self._keys or k in new_set:
                    if self.on_duplicate == "error":
                        raise DuplicateTrajectoryError(f"{self.path}: trajectory {k} is already stored")
                    continue
                try:  # never write a record that the readers would reject
                    check_trajectory_record(t.to_dict())
                except ValueError as e:
                    raise RecordError(f"{self.path}: trajectory {k}: {e}") from None
                line = t.to_json()
                if "\n" in line:  # json.dumps escapes newlines; guard against a custom to_json
                    raise ValueError(f"trajectory {k}: serialised record contains a newline")
                lines.append(line.encode() + b"\n")
                new.append(k)
                new_set.add(k)
            if not lines:
                return 0
            data = b"".join(lines)
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            if self.fsync:
                os.fsync(fd)
            self._keys.update(new)
            self._indexed_to = os.fstat(fd).st_size
        return len(new)

    def compact(self) -> int:
        """Rewrite the file keeping the first record of each key and dropping a torn last line; atomic
        (temporary file + fsync + rename). Returns the number of records kept."""
        if not self.path.exists():
            return 0
        kept = 0
        with self._locked():
            seen: set[Key] = set()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                with atomic_open(self.path, "wb") as out:
                    for d in self.iter(as_dict=True):
                        k = key_of(d)
                        if k in seen:
                            continue
                        seen.add(k)
                        out.write(json.dumps(d, separators=(",", ":")).encode() + b"\n")
                        kept += 1
            self._keys, self._indexed_to = seen, self.path.stat().st_size
        return kept

    def __repr__(self) -> str:
        return f"TrajectoryStore({str(self.path)!r})"


def read_trajectory_file(path: str | os.PathLike, *, what: str = "trajectory file") -> list[Trajectory]:
    """Every trajectory of a JSONL file that a user hands to a command (``roro pairs --trajectories``,
    ``roro rubric --trajectories``), checked as a whole:

    * a missing file is a :class:`FileNotFoundError` naming it;
    * each line as :meth:`TrajectoryStore.iter` reads it (a torn last line is skipped with a warning, any
      other bad line is a :class:`StoreCorruptError` naming ``file:line`` and the field);
    * two records with the same key ``(query_id, sample_idx, policy_id)`` are a :class:`StoreCorruptError`
      naming ``file:line`` of the second and the line of the first (a store never holds a key twice, so
      the file was edited or concatenated by hand);
    * a file with no trajectory (empty, or only a torn line) is a :class:`StoreCorruptError` saying so.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    store = TrajectoryStore(p)
    first: dict[Key, int] = {}
    out: list[Trajectory] = []
    for lineno, t in store._iter_numbered():
        k = key_of(t)  # type: ignore[arg-type]
        if k in first:
            raise StoreCorruptError(f"{p}:{lineno}: duplicate trajectory key (query_id, sample_idx, policy_id) = "
                                    f"{k} (first on line {first[k]}); keep one record per key")
        first[k] = lineno
        out.append(t)  # type: ignore[arg-type]
    if not out:
        raise StoreCorruptError(f"{p}: {what} holds no trajectory (empty file); "
                                "collect some with `roro collect` first")
    return out
