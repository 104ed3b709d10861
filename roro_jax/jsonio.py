"""JSON files: the one JSONL reader (streamed, errors naming ``file:LINE``) and the one atomic writer.

* :func:`iter_jsonl` / :func:`read_jsonl` stream a UTF-8 JSONL file, skip blank lines and a UTF-8
  byte-order mark, and raise the caller's error class (:class:`~roro_jax.types.InputError` by default)
  with ``path:line: not valid UTF-8 (...)`` or ``path:line: malformed JSON (...)``. :func:`decode_line` is
  the same decoding of one line, for readers with their own line handling (the trajectory store).
* :func:`atomic_open` writes a file so that a reader sees the old one or the whole new one, never a part:
  a temporary file in the same folder, flushed and fsynced, renamed over ``path`` (``os.replace``), the
  folder fsynced. :func:`atomic_write_text`, :func:`atomic_write_json` and :func:`atomic_write_jsonl` use it.

Appending (the trajectory store, the metrics log, the gate log) is not rewriting: those append in place.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from roro_jax.types import InputError

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which some editors put at the start of a file


def _text(raw: bytes) -> str:
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None


def decode_line(raw: bytes) -> Any:
    """The JSON value of one line (a leading byte-order mark skipped); ``ValueError`` says what is wrong."""
    return _json(_text(raw))


def iter_jsonl(path: str | os.PathLike, *, error: type[Exception] = InputError) -> Iterator[tuple[int, Any]]:
    """Stream ``(line number, row)`` of a UTF-8 JSONL file, skipping blank lines; a line that is not UTF-8
    or not JSON raises ``error("path:line: ...")``."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = _text(raw)
                if not line.strip():
                    continue
                row = _json(line)
            except ValueError as e:
                raise error(f"{path}:{lineno}: {e}") from None
            yield lineno, row


def read_jsonl(path: str | os.PathLike, cls=None, *, error: type[Exception] = InputError) -> Iterator[Any]:
    """Stream the rows of a JSONL file (see :func:`iter_jsonl`); with ``cls`` given, each row is turned into
    ``cls.from_dict(row)``, and a row it rejects raises ``error`` naming ``path:line``."""
    for lineno, row in iter_jsonl(path, error=error):
        if cls is None:
            yield row
            continue
        try:
            obj = cls.from_dict(row)
        except (TypeError, ValueError, AttributeError) as e:
            raise error(f"{path}:{lineno}: not a {cls.__name__.lower()} record: {e}") from None
        yield obj


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is as durable as it gets there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: ``path`` (its folder created) holds what was written
    once the block ends, or stays as it was if the block raises. Text modes are UTF-8."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`). Returns the path."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps) -> Path:
    """Write ``json.dumps(obj, **dumps)`` and a newline to ``path`` atomically. Returns the path."""
    return atomic_write_text(path, json.dumps(obj, **dumps) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any], **dumps) -> Path:
    """Write one ``json.dumps(row, **dumps)`` line per row to ``path`` atomically (streamed: ``rows`` may be a
    generator). Returns the path."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, **dumps) + "\n")
    return Path(path)


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """A JSON object of query id -> query text (``queries.json`` of an exploration); anything else is an
    :class:`~roro_jax.types.InputError` naming the file."""
    try:
        queries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON object of query id -> query text: {e}") from None
    if not isinstance(queries, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in queries.items()):
        raise InputError(f"{path}: must be a JSON object of query id -> query text (strings)")
    return queries
