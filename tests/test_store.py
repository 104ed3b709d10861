"""TrajectoryStore: keys, duplicates, resume, torn-line recovery, streaming memory."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from roro_jax.store import DuplicateTrajectoryError, StoreCorruptError, TrajectoryStore, key_of
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL, Step, Trajectory

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_traj(q: str, g: int, pid: str = "srm", n_steps: int = 2) -> Trajectory:
    steps = [Step(index=i, text=f"step {i} of {q}\n\n", token_ids=[5, 6, 7 + i],
                  model=LARGE if i % 2 else SMALL, action=ESCALATE if i % 2 else KEEP,
                  action_logp=-0.5, features=[0.1 * i, 0.2], small_tokens=3, large_tokens=3 * (i % 2),
                  finish_reason="stop") for i in range(n_steps)]
    return Trajectory(query_id=q, sample_idx=g, policy_id=pid, steps=steps, answer_text="42",
                      correct=bool(g % 2), seed=1000 + g, meta={"note": "x"})


def test_add_roundtrip_and_keys(tmp_path):
    st = TrajectoryStore(tmp_path / "sub" / "t.jsonl")
    assert len(st) == 0 and list(st.iter()) == []
    ts = [make_traj("q1", 0), make_traj("q1", 1), make_traj("q/2", 0, "rand-0.3")]
    for t in ts:
        assert st.add(t) is True
    back = list(st.iter())
    assert [b.to_dict() for b in back] == [t.to_dict() for t in ts]
    assert st.keys() == {("q1", 0, "srm"), ("q1", 1, "srm"), ("q/2", 0, "rand-0.3")}
    assert ("q1", 1, "srm") in st and ts[2] in st and ("q1", 2, "srm") not in st
    # a fresh store object on the same file sees the same contents
    st2 = TrajectoryStore(st.path)
    assert len(st2) == 3 and st2.get(("q/2", 0, "rand-0.3")).to_dict() == ts[2].to_dict()
    assert st2.get(("nope", 0, "srm")) is None


def test_duplicates_ignored_or_error(tmp_path):
    p = tmp_path / "t.jsonl"
    st = TrajectoryStore(p)
    t = make_traj("q", 0)
    assert st.add(t) and not st.add(make_traj("q", 0, n_steps=5))
    assert st.add_many([make_traj("q", 1), make_traj("q", 1), make_traj("q", 0)]) == 1
    assert p.read_text().count("\n") == 2
    strict = TrajectoryStore(p, on_duplicate="error")
    with pytest.raises(DuplicateTrajectoryError, match=r"\('q', 0"):
        strict.add(make_traj("q", 0))
    assert p.read_text().count("\n") == 2
    with pytest.raises(ValueError, match="on_duplicate"):
        TrajectoryStore(p, on_duplicate="overwrite")
    with pytest.raises(TypeError, match="expected a Trajectory"):
        st.add({"query_id": "q"})  # type: ignore[arg-type]


def test_missing_for_resume(tmp_path):
    st = TrajectoryStore(tmp_path / "t.jsonl")
    expected = [(f"q{i}", g, "p") for i in range(4) for g in range(3)]
    for k in expected[::2]:
        st.add(make_traj(k[0], k[1], k[2]))
    miss = st.missing(expected + expected[:3])  # repeated expectations reported once, in order
    assert miss == expected[1::2]
    assert st.missing([make_traj("q0", 0, "p")]) == []


def test_writer_sees_other_writers_lines(tmp_path):
    a = TrajectoryStore(tmp_path / "t.jsonl")
    b = TrajectoryStore(tmp_path / "t.jsonl")
    assert a.add(make_traj("q", 0))
    assert len(b) == 1
    assert b.add(make_traj("q", 1))
    assert not a.add(make_traj("q", 1))  # a catches up before checking: no duplicate
    assert (tmp_path / "t.jsonl").read_text().count("\n") == 2


def _proc_writer(path: str, lo: int, hi: int) -> None:
    st = TrajectoryStore(path, fsync=False)
    for i in range(lo, hi):
        st.add(make_traj(f"q{i}", 0, n_steps=1))


def test_concurrent_processes_never_duplicate(tmp_path):
    p = str(tmp_path / "t.jsonl")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_proc_writer, args=(p, lo, lo + 60)) for lo in (0, 30, 45)]  # overlapping
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    keys = [key_of(json.loads(line)) for line in open(p)]
    assert len(keys) == len(set(keys)) == 105


@pytest.mark.parametrize("tail", [b'{"query_id": "q9", "sample', b"\x00\x00\x00\n", b"{\n"])
def test_torn_last_line(tmp_path, tail):
    p = tmp_path / "t.jsonl"
    st = TrajectoryStore(p)
    for g in range(3):
        st.add(make_traj("q", g))
    good_size = p.stat().st_size
    with open(p, "ab") as f:  # what a crash mid-append can leave
        f.write(tail)
    # readers skip it with a warning and do not touch the file
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert [t.sample_idx for t in TrajectoryStore(p).iter()] == [0, 1, 2]
    assert p.stat().st_size == good_size + len(tail)
    # a writer-side index build truncates it; resuming adds each missing key once
    st2 = TrajectoryStore(p)
    with pytest.warns(RuntimeWarning, match="truncated"):
        assert st2.missing([("q", g, "srm") for g in range(5)]) == [("q", 3, "srm"), ("q", 4, "srm")]
    assert p.stat().st_size == good_size
    assert st2.add(make_traj("q", 3)) and st2.add(make_traj("q", 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [t.sample_idx for t in TrajectoryStore(p).iter()] == [0, 1, 2, 3, 4]


def test_torn_tail_truncated_before_first_append(tmp_path):
    p = tmp_path / "t.jsonl"
    st = TrajectoryStore(p)
    st.add(make_traj("q", 0))
    with open(p, "ab") as f:
        f.write(make_traj("q", 1).to_json().encode()[:40])
    with pytest.warns(RuntimeWarning, match="truncated"):
        assert TrajectoryStore(p).add(make_traj("q", 1))  # the torn copy of q/1 was not counted
    rows = [json.loads(line) for line in open(p)]
    assert [r["sample_idx"] for r in rows] == [0, 1]


def test_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "t.jsonl"
    st = TrajectoryStore(p)
    st.add(make_traj("q", 0))
    with open(p, "ab") as f:
        f.write(b'{"not": "a trajectory"}\n')
    with open(p, "ab") as f:
        f.write(make_traj("q", 1).to_json().encode() + b"\n")
    with pytest.raises(StoreCorruptError, match=r"t\.jsonl:2"):
        list(TrajectoryStore(p).iter())
    with pytest.raises(StoreCorruptError, match=r"t\.jsonl:2"):
        TrajectoryStore(p).keys()


def test_compact(tmp_path):
    p = tmp_path / "t.jsonl"
    lines = [make_traj("q", 0).to_json(), make_traj("q", 1).to_json(), make_traj("q", 0, n_steps=4).to_json()]
    p.write_text("\n".join(lines) + "\n" + lines[1][:10])  # a duplicate written by hand + a torn tail
    st = TrajectoryStore(p)
    assert st.compact() == 2
    rows = [json.loads(line) for line in open(p)]
    assert [(r["sample_idx"], len(r["steps"])) for r in rows] == [(0, 2), (1, 2)]
    assert len(st) == 2 and not st.add(make_traj("q", 1))


_RSS_PROBE = """
import resource, sys
from roro_jax.store import TrajectoryStore
limit = int(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 0
for t in TrajectoryStore(sys.argv[1]).iter():
    n += 1
    if n >= limit:
        break
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def _rss_growth_kib(path, limit: int) -> tuple[int, int]:
    """Records read and peak-RSS growth (KiB) of a fresh interpreter streaming ``limit`` records."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path), str(limit)], check=True,
                         capture_output=True, text=True, cwd=REPO_ROOT).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.slow
def test_iteration_memory_is_flat_for_100k(tmp_path):
    p = tmp_path / "big.jsonl"
    one = make_traj("q", 0, n_steps=1).to_dict()
    with open(p, "w") as f:  # generated directly (100k fsync'd adds would only test the disk)
        for i in range(100_000):
            one["query_id"], one["sample_idx"] = f"q{i // 8}", i % 8
            f.write(json.dumps(one, separators=(",", ":")) + "\n")
    size_kib = p.stat().st_size // 1024
    assert size_kib > 30_000, size_kib
    n_small, grow_small = _rss_growth_kib(p, 1_000)
    n_all, grow_all = _rss_growth_kib(p, 10**9)
    assert (n_small, n_all) == (1_000, 100_000)
    # streaming: peak RSS after reading all 100k is about that after 1k, and small against the file
    assert grow_all < grow_small + 8 * 1024, (grow_small, grow_all)
    assert grow_all < size_kib / 4, (grow_all, size_kib)
    # the key index is keys only; missing() over the full expectation finds exactly the gap
    st = TrajectoryStore(p)
    expected = [(f"q{i // 8}", i % 8, "srm") for i in range(100_008)]
    assert st.missing(expected) == [("q12500", g, "srm") for g in range(8)]
