"""The one JSONL reader (errors naming ``file:LINE``, a byte-order mark skipped) and the one atomic writer
(old file or whole new file, never a part)."""

import json

import pytest

from roro_jax.jsonio import (atomic_open, atomic_write_json, atomic_write_jsonl, atomic_write_text, decode_line,
                             iter_jsonl, read_jsonl)
from roro_jax.types import InputError, PreferencePair


def test_rows_blank_lines_and_a_byte_order_mark(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \n[2]\r\n"\xc3\xa9"')
    assert list(iter_jsonl(p)) == [(1, {"a": 1}), (4, [2]), (5, "é")]
    assert list(read_jsonl(p)) == [{"a": 1}, [2], "é"]


@pytest.mark.parametrize("body,says", [
    (b'{"a": 1}\n{"a": }\n', "x.jsonl:2: malformed JSON (Expecting value at column 7)"),
    (b'{"a": 1}\n{"a": "\xff\xfe"}\n', "x.jsonl:2: not valid UTF-8 (byte 0xff at column 8)"),
])
def test_a_bad_line_is_named_with_the_callers_error(tmp_path, body, says):
    p = tmp_path / "x.jsonl"
    p.write_bytes(body)
    with pytest.raises(InputError) as e:
        list(iter_jsonl(p))
    assert str(e.value).endswith(says)

    class MyError(ValueError):
        pass

    with pytest.raises(MyError, match=says.split(": ", 1)[0]):
        list(iter_jsonl(p, error=MyError))


def test_read_jsonl_with_a_record_class(tmp_path):
    p = tmp_path / "s.jsonl"
    good = PreferencePair("q", "t1", "t2", "outcome").to_dict()
    p.write_text(json.dumps(good) + "\n" + json.dumps({"nope": 1}) + "\n")
    rows = read_jsonl(p, PreferencePair)
    assert next(rows) == PreferencePair("q", "t1", "t2", "outcome")
    with pytest.raises(InputError, match=r"s.jsonl:2: not a preferencepair record"):
        next(rows)


def test_decode_line_says_what_is_wrong():
    assert decode_line(b'\xef\xbb\xbf{"k": [1]}\n') == {"k": [1]}
    with pytest.raises(ValueError, match="malformed JSON"):
        decode_line(b'{"k": \n')


def test_atomic_writes(tmp_path):
    p = tmp_path / "deep" / "er" / "f.json"
    assert atomic_write_json(p, {"b": 1, "a": [1.5]}, indent=1, sort_keys=True) == p
    assert p.read_text() == json.dumps({"a": [1.5], "b": 1}, indent=1) + "\n"
    atomic_write_text(p, "é\n")
    assert p.read_bytes() == "é\n".encode()
    atomic_write_jsonl(p, iter([{"x": 1}, [2]]), separators=(",", ":"))
    assert p.read_text() == '{"x":1}\n[2]\n'
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text("old\n")
    with pytest.raises(ValueError, match="Out of range float"):
        atomic_write_jsonl(p, [{"ok": 1}, {"bad": float("nan")}], allow_nan=False)
    assert p.read_text() == "old\n" and [x.name for x in tmp_path.iterdir()] == ["f.jsonl"]
    with pytest.raises(RuntimeError):
        with atomic_open(p, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("killed")
    assert p.read_text() == "old\n"
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(p, "a"):
            pass
