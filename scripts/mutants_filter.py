"""Prune a cosmic-ray session to the mutants worth running, and summarise finished sessions.

Runs with cosmic-ray's own venv (``scripts/mutants.sh`` makes it). cosmic-ray proposes every operator for
every site: a ``+`` becomes each of 11 other binary operators, a ``<`` each of 7 other comparisons. Most of
those say nothing more than one well-chosen replacement, so per site this keeps

* binary operators: the counterpart (``+``↔``-``, ``*``↔``/``, ``//`` → ``/``, ``%`` → ``*``, ``**`` →
  ``*``, ``|``↔``&``, ``@`` → ``*``, shifts to each other);
* comparisons: the boundary (``<``↔``<=``, ``>``↔``>=``) and the negation (``==``↔``!=``, ``<`` → ``>=``, ...,
  ``is``↔``is not``, ``in``↔``not in``);
* every other operator cosmic-ray has (numbers ± 1, ``not`` added, unary operators, ``True``/``False``/
  ``None`` swaps, ``break``/``continue``, zero-iteration loops, removed decorators, exception swaps).

Mutants inside annotations (not evaluated: ``from __future__ import annotations``), docstrings or an
excluded line range are skipped, and ``--sample N`` keeps a seeded random N of the rest (0: all). Skipped
mutants are marked SKIPPED in the session with the reason, so ``cr-report`` shows what was left out.

    python scripts/mutants_filter.py prune SESSION --module roro_jax/rl/losses.py [--lines 280-352] [--sample 60]
    python scripts/mutants_filter.py summary SESSION... [--markdown]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
from pathlib import Path

BINARY_KEEP = {"Add": {"Sub"}, "Sub": {"Add"}, "Mul": {"Div"}, "Div": {"Mul"}, "FloorDiv": {"Div"},
               "Mod": {"Mul"}, "Pow": {"Mul"}, "BitOr": {"BitAnd"}, "BitAnd": {"BitOr"}, "BitXor": {"BitOr"},
               "MatMult": {"Mul"}, "LShift": {"RShift"}, "RShift": {"LShift"}}
COMPARISON_KEEP = {"Lt": {"LtE", "GtE"}, "LtE": {"Lt", "Gt"}, "Gt": {"GtE", "LtE"}, "GtE": {"Gt", "Lt"},
                   "Eq": {"NotEq"}, "NotEq": {"Eq"}, "Is": {"IsNot"}, "IsNot": {"Is"}, "In": {"NotIn"},
                   "NotIn": {"In"}}


def _kept_variant(op: str) -> bool:
    for prefix, table in (("core/ReplaceBinaryOperator_", BINARY_KEEP),
                          ("core/ReplaceComparisonOperator_", COMPARISON_KEEP)):
        if op.startswith(prefix):
            src, dst = op[len(prefix):].split("_", 1)
            return dst in table.get(src, set())
    return True


def _dead_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions (line, col) of annotations and docstrings: code that never runs."""
    spans = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            anns.append(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            anns.append(node.returns)
        if isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                anns.append(first)
        for a in anns:
            spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def _inside(pos, spans) -> bool:
    p = tuple(pos)
    return any(s <= p < e or s <= p <= e for s, e in spans)


def prune(session: str, module: str, lines: str | None, sample: int, seed: int) -> dict:
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = _dead_spans(Path(module).read_text())
    lo, hi = (int(x) for x in lines.split("-")) if lines else (1, 10**9)
    skip: dict[str, list[str]] = {"operator variant": [], "annotation or docstring": [], "outside lines": [],
                                  "not sampled": []}
    keep = []
    with use_db(session) as db:
        for item in db.pending_work_items:
            (m,) = item.mutations
            if not _kept_variant(m.operator_name):
                skip["operator variant"].append(item.job_id)
            elif _inside(m.start_pos, spans):
                skip["annotation or docstring"].append(item.job_id)
            elif not lo <= m.start_pos[0] <= hi:
                skip["outside lines"].append(item.job_id)
            else:
                keep.append((tuple(m.start_pos), tuple(m.end_pos), m.operator_name, m.occurrence,
                             json.dumps(m.operator_args, sort_keys=True, default=str), item.job_id))
        keep.sort()  # by site and operator, not by job id (a new random UUID at every init): same sample each run
        if sample and len(keep) > sample:
            rng = random.Random(seed)
            chosen = set(rng.sample(range(len(keep)), sample))
            skip["not sampled"] = [k[-1] for i, k in enumerate(keep) if i not in chosen]
            keep = [k for i, k in enumerate(keep) if i in chosen]
        keep = [k[-1] for k in keep]
        for why, ids in skip.items():
            if ids:
                db.set_multiple_results(ids, WorkResult(output=f"skipped by mutants_filter: {why}",
                                                        worker_outcome=WorkerOutcome.SKIPPED))
    out = {"session": session, "kept": len(keep), **{f"skipped ({k})": len(v) for k, v in skip.items()}}
    print(json.dumps(out))
    return out


def summary(sessions: list[str], markdown: bool) -> list[dict]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    rows = []
    for s in sessions:
        with use_db(s, WorkDB.Mode.open) as db:
            killed = survived = incompetent = pending = 0
            survivors = []
            for item, result in db.completed_work_items:
                if result.worker_outcome == WorkerOutcome.SKIPPED:
                    continue
                if result.worker_outcome != WorkerOutcome.NORMAL:  # abnormal exit / exception: counted killed
                    killed += 1
                elif result.test_outcome == TestOutcome.KILLED:
                    killed += 1
                elif result.test_outcome == TestOutcome.INCOMPETENT:
                    incompetent += 1
                else:
                    survived += 1
                    (m,) = item.mutations
                    survivors.append(f"{m.module_path}:{m.start_pos[0]} {m.operator_name} "
                                     f"({m.definition_name})")
            pending = sum(1 for _ in db.pending_work_items)
        run = killed + survived
        rows.append({"session": Path(s).stem, "killed": killed, "survived": survived,
                     "incompetent": incompetent, "pending": pending,
                     "score": killed / run if run else float("nan"), "survivors": survivors})
    if markdown:
        print("| module | mutants run | killed | survived | score | not run (pending) |")
        print("|---|---|---|---|---|---|")
        tk = ts = 0
        for r in rows:
            tk, ts = tk + r["killed"], ts + r["survived"]
            print(f"| {r['session']} | {r['killed'] + r['survived']} | {r['killed']} | {r['survived']} | "
                  f"{r['score']:.0%} | {r['pending']} |")
        print(f"| **all** | {tk + ts} | {tk} | {ts} | {tk / max(tk + ts, 1):.0%} | |")
        for r in rows:
            for sv in r["survivors"]:
                print(f"- survived: `{sv}`")
    else:
        print(json.dumps(rows, indent=1))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prune")
    a.add_argument("session")
    a.add_argument("--module", required=True)
    a.add_argument("--lines", help="keep only mutants starting in this line range, e.g. 280-352")
    a.add_argument("--sample", type=int, default=0, help="keep a seeded random sample of this many (0: all)")
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("summary")
    b.add_argument("sessions", nargs="+")
    b.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "prune":
        prune(args.session, args.module, args.lines, args.sample, args.seed)
    else:
        summary(args.sessions, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
