"""Do the published result tables match what their commands print? (``make results-check``)

The replay-world tables of ``benchmarks/RESULTS.md`` and the README are ``pipelines.results_table`` over
the per-seed report summaries committed in ``benchmarks/results/replay_seed{0,1,2}/report/<test>/
summary.json`` (the ``summary.json`` files that ``roro eval -c configs/replay_math500.yaml seed=S`` writes,
nothing else copied). Two checks:

* ``tables`` (instant; also a unit test): each table built from the committed summaries appears verbatim
  in RESULTS.md (MATH-500 held-out and AIME 2025) and in the README (MATH-500 held-out);
* ``rerun`` (minutes per seed): the table's command is run again for the given seeds on the current code,
  and each seed's one-seed table (3 decimals, as published) must equal the one from its committed summary.

    python -m pipelines.results_check                  # tables, then rerun seed 0
    python -m pipelines.results_check --seeds 0 1 2    # every seed
    python -m pipelines.results_check --tables-only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.results_table import build_table

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "benchmarks" / "results"
RESULTS_MD, README = ROOT / "benchmarks" / "RESULTS.md", ROOT / "README.md"
TABLES = {  # name: (config, run prefix, {test set: documents that print its table}, seeds)
    "replay": ("configs/replay_math500.yaml", "replay_seed",
               {"math500_heldout": (RESULTS_MD, README), "aime2025": (RESULTS_MD,)}, (0, 1, 2)),
}


def stored_runs(name: str) -> list[Path]:
    _, prefix, _, seeds = TABLES[name]
    return [STORED / f"{prefix}{s}" for s in seeds]


def _rows(table: str) -> str:
    """The table's rows without the closing line (which names the run folders)."""
    return table.split("\n\n")[0]


def check_tables(name: str = "replay") -> list[str]:
    """Problems found: a table built from the committed summaries that a document does not contain."""
    problems = []
    for test, docs in TABLES[name][2].items():
        rows = _rows(build_table(stored_runs(name), test))
        for doc in docs:
            if rows not in doc.read_text():
                problems.append(f"{doc.relative_to(ROOT)}: the {name} table for {test} differs from "
                                f"`python -m pipelines.results_table` over {STORED.relative_to(ROOT)}/{TABLES[name][1]}*")
    return problems


def rerun(name: str, seeds, out_root: Path, *, python: str = sys.executable) -> list[str]:
    """Run the table's command for ``seeds`` into ``out_root`` and compare each seed's table with the stored one."""
    config, prefix, tests, _ = TABLES[name]
    problems = []
    for s in seeds:
        out = out_root / f"{prefix}{s}"
        cmd = [python, "-m", "roro_jax.cli", "eval", "-c", config, f"seed={s}", f"out_dir={out}"]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        for test in tests:
            fresh = _rows(build_table([out], test))
            stored = _rows(build_table([STORED / f"{prefix}{s}"], test))
            if fresh != stored:
                problems.append(f"{name} seed {s}, {test}: the command now prints\n{fresh}\nbut the published "
                                f"table was built from\n{stored}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default="replay", choices=sorted(TABLES))
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--tables-only", action="store_true")
    p.add_argument("--out", type=Path, help="where the reruns write (default: a temporary folder)")
    a = p.parse_args(argv)
    problems = check_tables(a.table)
    if not a.tables_only and a.seeds:
        with tempfile.TemporaryDirectory(prefix="results-check-") as tmp:
            problems += rerun(a.table, a.seeds, a.out or Path(tmp))
    for msg in problems:
        print("results-check: " + msg, file=sys.stderr)
    print(f"results-check ({a.table}): " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
