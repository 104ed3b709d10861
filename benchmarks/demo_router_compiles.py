"""Compiles of the router update and the time of the routers stage in ``roro demo`` (issue 16, item 5).

    python benchmarks/demo_router_compiles.py [-c configs/demo.yaml] [--out DIR] [KEY=VALUE ...]

Runs :func:`pipelines.roro.run_roro` on the demo config up to the end of the routers stage (the evaluation
stage is skipped), with ``jax_log_compiles`` on, and prints one JSON line: the XLA compilations of the
router's update function (``jit(generic_update)`` now, ``jit(run)`` before the generic update) in the
routers stage, the number of routers, the stage times and the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re

import jax

UPDATE_NAMES = ("generic_update", "run")  # the update's jitted function, after / before issue 16


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def emit(self, record):
        m = re.match(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
        if m:
            self.names.append(m.group(1))


class _StopAfterRouters(Exception):
    pass


def main(argv=None) -> dict:
    from rich.console import Console

    from pipelines.demo import demo_config
    from pipelines.roro import run_roro

    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--config", default="configs/demo.yaml")
    ap.add_argument("--out", default="runs/demo_compiles")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    cfg = demo_config(a.config, [f"out_dir={a.out}", *a.overrides])
    jax.config.update("jax_log_compiles", True)
    handler = _Compiles()
    logging.getLogger("jax").addHandler(handler)
    logging.getLogger("jax").setLevel(logging.WARNING)
    marks: dict[str, int] = {}

    class Stop(Console):  # counts compiles per stage from the stage lines; stops after the routers
        def print(self, *args, **kw):
            text = " ".join(str(x) for x in args)
            super().print(*args, **kw)
            for stage in ("rubric", "routers"):
                if f"✓[/] {stage}:" in text:
                    marks[stage] = len(handler.names)
                    if stage == "routers":
                        raise _StopAfterRouters(text)

    stage_line = ""
    try:
        run_roro(cfg, progress=False, console=Stop(stderr=True))
    except _StopAfterRouters as e:
        stage_line = str(e)
    in_routers = handler.names[marks["rubric"]:marks["routers"]]
    seconds = re.search(r"\((\d+) s\)", stage_line)
    out = {"update_compiles": sum(n in UPDATE_NAMES for n in in_routers), "compiles_in_routers": len(in_routers),
           "routers": len(cfg.sweep.lambda_c) * 2, "updates": cfg.train.updates,
           "routers_stage_s": int(seconds.group(1)) if seconds else None, "loadavg": os.getloadavg()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
