"""Benchmark loaders: every shipped file, user paths, malformed files."""

import json

import pytest

from roro_jax.tasks import BenchmarkFormatError, Problem, available_benchmarks, load_benchmark
from roro_jax.tasks.benchmarks import PACKAGED_DIR

# Row counts from ../shared/data/README.md.
EXPECTED_ROWS = {
    "math500": 500,
    "gsm8k": 1319,
    "aime24": 30,
    "aime.train": 451,
    "aime.test": 482,
    "amc23": 40,
    "minerva_math": 272,
    "olympiadbench": 675,
}


@pytest.mark.parametrize("name,rows", sorted(EXPECTED_ROWS.items()))
def test_every_shipped_file_loads_with_readme_row_count(name, rows):
    probs = load_benchmark(name)
    assert len(probs) == rows
    assert all(isinstance(p, Problem) for p in probs)
    assert len({p.id for p in probs}) == rows
    for p in probs:
        assert p.question and p.answer and p.source == name.split(".")[0]
        assert p.answer == p.answer.strip()
    # Same result through an explicit path.
    path = PACKAGED_DIR / {"math500": "math500.test.jsonl", "gsm8k": "gsm8k.test.jsonl",
                           "aime24": "aime24.test.jsonl", "aime.train": "aime.train.jsonl",
                           "aime.test": "aime.test.jsonl", "amc23": "amc23.test.jsonl",
                           "minerva_math": "minerva_math.test.jsonl",
                           "olympiadbench": "olympiadbench.test.jsonl"}[name]
    assert load_benchmark(path) == probs
    assert load_benchmark(str(path)) == probs


def test_shipped_names_listed():
    names = available_benchmarks()
    for n in EXPECTED_ROWS:
        assert n in names


def test_field_mapping_per_file():
    m = load_benchmark("math500")[0]
    assert m.question.startswith("Convert the point $(0,3)$")
    assert m.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert m.id == "math500:test/precalculus/807.json" and m.meta["subject"] == "Precalculus"

    g = load_benchmark("gsm8k")
    assert g[0].answer == "18" and g[0].question.startswith("Janet")
    assert all("####" not in p.answer for p in g)
    assert all("," not in p.answer for p in g)  # "#### 2,125" -> "2125"
    assert any(p.id == "gsm8k:0" for p in g)

    mi = load_benchmark("minerva_math")
    assert mi[0].answer == "1.6" and "\\boxed" not in "".join(p.answer for p in mi)

    ob = load_benchmark("olympiadbench")
    assert ob[0].answer == "2" and not any(p.answer.startswith("[") for p in ob)

    amc = load_benchmark("amc23")
    assert amc[0].answer == "27"  # 27.0 in the file

    aime = load_benchmark("aime.train")
    assert aime[0].answer == "93" and aime[0].id == "aime:1984-1"
    assert load_benchmark("aime24")[0].answer == "204"
    assert load_benchmark("aime") == load_benchmark("aime.test")


def test_limit_and_unknown_name():
    assert len(load_benchmark("math500", limit=7)) == 7
    with pytest.raises(FileNotFoundError, match="no_such_set"):
        load_benchmark("no_such_set")


def _write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_user_file_with_inferred_schema(tmp_path):
    p = _write(tmp_path, "mine.jsonl", [
        {"question": "1+1?", "answer": "Add them.\n#### 2"},
        {"question": "Box?", "answer": "so \\boxed{\\frac{1}{2}}"},
        {"question": "List?", "answer": ["3", "4"]},
        "",
        {"question": "Num?", "answer": 5.0},
    ])
    probs = load_benchmark(p)
    assert [q.answer for q in probs] == ["2", "\\frac{1}{2}", "3, 4", "5"]
    assert [q.id for q in probs] == ["mine:0", "mine:1", "mine:2", "mine:3"]
    assert probs[0].source == "mine"


@pytest.mark.parametrize("rows,line,match", [
    ([{"problem": "q", "answer": "1"}, "{not json"], 2, "malformed JSON"),
    ([{"problem": "q", "answer": "1"}, {"problem": "q2"}], 2, "missing field 'answer'"),
    ([{"problem": "q", "answer": "1"}, {"problem": "", "answer": "2"}], 2, "non-empty"),
    ([{"problem": "q", "answer": "1"}, [1, 2]], 2, "expected an object"),
    ([{"problem": "q", "answer": "1"}, {"problem": "q", "answer": None}], 2, "missing field"),
    ([{"problem": "q", "answer": "1"}, {"problem": "q", "answer": True}], 2, "boolean"),
    ([{"problem": "q", "answer": "1"}, {"problem": "q", "answer": "  "}], 2, "empty answer"),
    ([{"problem": "q", "answer": "1", "id": 1}, {"problem": "q", "answer": "2", "id": 1}], 2,
     "duplicate id"),
    ([{"text": "q", "label": "1"}], 1, "cannot tell which fields"),
])
def test_malformed_user_file_names_file_and_line(tmp_path, rows, line, match):
    p = _write(tmp_path, "bad.jsonl", rows)
    with pytest.raises(BenchmarkFormatError, match=match) as e:
        load_benchmark(p)
    assert f"bad.jsonl:{line}:" in str(e.value)


@pytest.mark.parametrize("stem,row,match", [
    ("gsm8k.test.jsonl", {"question": "q", "answer": "no hashes here"}, "####"),
    ("minerva_math.test.jsonl", {"problem": "q", "solution": "no box", "idx": 0}, "boxed"),
    ("minerva_math.test.jsonl", {"problem": "q", "solution": "\\boxed{1", "idx": 0}, "boxed"),
    ("olympiadbench.test.jsonl", {"question": "q", "final_answer": [], "id": 1}, "empty list"),
    ("math500.test.jsonl", {"problem": "q", "answer": ["1"], "unique_id": "a"}, "list"),
])
def test_malformed_rows_of_known_formats(tmp_path, stem, row, match):
    good = {"gsm8k.test.jsonl": {"question": "q", "answer": "x\n#### 1"},
            "minerva_math.test.jsonl": {"problem": "q", "solution": "\\boxed{1}", "idx": 9},
            "olympiadbench.test.jsonl": {"question": "q", "final_answer": ["1"], "id": 9},
            "math500.test.jsonl": {"problem": "q", "answer": "1", "unique_id": "b"}}[stem]
    p = _write(tmp_path, stem, [good, good | {"idx": 10, "id": 10, "unique_id": "c"}, row])
    with pytest.raises(BenchmarkFormatError, match=match) as e:
        load_benchmark(p)
    assert f"{stem}:3:" in str(e.value)


def test_empty_file(tmp_path):
    p = _write(tmp_path, "empty.jsonl", [""])
    with pytest.raises(BenchmarkFormatError, match="empty"):
        load_benchmark(p)


@pytest.mark.shared_data
def test_shipped_copies_match_shared_data(shared_data):
    for f in sorted((shared_data / "benchmarks").glob("*.jsonl")):
        assert (PACKAGED_DIR / f.name).read_bytes() == f.read_bytes(), f.name
