"""A run folder a user can audit: saved config, metrics rows, checkpoint interval, resume/finish notices,
and the optional TensorBoard writer (issue 17)."""

from __future__ import annotations

import json
import struct

import pytest
from omegaconf import OmegaConf

from pipelines.router_synthetic import train_router_synthetic
from roro_jax.config import load_config
from roro_jax.rl.run_dir import RUN_CONFIG, config_changes

BASE = ["synthetic.queries=8", "synthetic.steps=6", "synthetic.features=4", "router.hidden=[8]",
        "grpo.minibatches=2"]


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_checkpoint_every_10_writes_10_20_30_only(tmp_path):
    cfg = load_config(None, BASE + ["train.updates=30", "checkpoint.every=10", "checkpoint.keep=10",
                                    f"out_dir={tmp_path}"])
    train_router_synthetic(cfg, resume=False, progress=False)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [10, 20, 30]  # orbax alone also saved step 1


def test_metrics_rows_config_and_resume_notices(tmp_path, capsys):
    cfg = load_config(None, BASE + ["train.updates=4", "checkpoint.every=2", f"out_dir={tmp_path}"])
    train_router_synthetic(cfg, resume=False, stop_after=2, progress=False)
    saved = OmegaConf.to_container(OmegaConf.load(tmp_path / RUN_CONFIG))
    assert saved["router"]["hidden"] == [8] and saved["out_dir"] == str(tmp_path)
    assert config_changes(saved, cfg) == []
    first = rows(tmp_path)
    assert [r["update"] for r in first] == [1, 2]
    for r in first:
        assert r["mode"] == "single" and r["devices"] == 1
        assert r["step_s"] > 0 and r["wall_s"] >= r["step_s"] and r["time"] > 1.7e9
        assert "resumed_from" not in r
    assert first[1]["wall_s"] > first[0]["wall_s"]

    _, hist = train_router_synthetic(cfg, resume=True, progress=False)
    out = capsys.readouterr().out
    assert f"resuming {tmp_path} after update 2 of 4" in out
    log = rows(tmp_path)
    assert [r["update"] for r in log] == [1, 2, 3, 4] and log[2]["resumed_from"] == 2
    assert "resumed_from" not in log[3]

    _, hist = train_router_synthetic(cfg, resume=True, progress=False)  # the run is finished
    out = capsys.readouterr().out
    assert hist == [] and f"{tmp_path} already finished (4 of 4 updates): reward {log[-1]['reward']:.3f}" in out
    assert len(rows(tmp_path)) == 4


def test_a_run_saved_with_removed_keys_resumes(tmp_path):
    """A run folder whose config.yaml still holds keys that left the schema (``router.topk``,
    ``train.log_every``) is not a config change; a changed training key still is."""
    cfg = load_config(None, BASE + [f"out_dir={tmp_path}"])
    saved = OmegaConf.to_container(OmegaConf.structured(cfg))
    saved["router"]["topk"], saved["train"]["log_every"] = 5, 10
    assert config_changes(saved, cfg) == []
    saved["router"]["hidden"] = [4]
    assert config_changes(saved, cfg) == [("router.hidden", [4], [8])]


def test_data_parallel_rows_record_devices_and_mode(tmp_path):
    cfg = load_config(None, BASE + ["train.updates=1", "parallel.mode=shard_map", "parallel.devices=4",
                                    f"out_dir={tmp_path}"])
    train_router_synthetic(cfg, resume=False, progress=False)
    (r,) = rows(tmp_path)
    assert r["mode"] == "shard_map" and r["devices"] == 4


def _tb_scalars(logdir):
    """Every scalar in the TensorBoard event files under ``logdir``: {tag: {step: value}} (TFRecord framing
    read here; events parsed with tensorboardX's protobuf)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def test_tensorboard_gets_the_metrics_scalars(tmp_path):
    # tensorboardX: the `tensorboard` extra, part of `dev` (make test installs it)
    cfg = load_config(None, BASE + ["train.updates=3", "logging.tensorboard=true", f"out_dir={tmp_path}"])
    train_router_synthetic(cfg, resume=False, progress=False)
    tb = _tb_scalars(tmp_path / "tensorboard")
    log = rows(tmp_path)
    numeric = {k for k, v in log[0].items() if isinstance(v, (int, float)) and k != "update"}
    assert numeric <= set(tb) and {"loss", "reward", "step_s"} <= numeric
    for r in log:
        for k in numeric:
            assert tb[k][r["update"]] == pytest.approx(r[k], rel=1e-6, abs=1e-6)


def _leaves(out, step):
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(out / "checkpoints" / str(step) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_engine_error_mid_run_keeps_every_completed_update(tmp_path, monkeypatch, capsys):
    """`roro router` whose collection fails for good at update 3 (a dead server: the engine's error after
    its retries) with checkpoints only every 10 updates: one `roro: error:` line (exit 1, no traceback),
    updates 1-2 logged and checkpointed (saved on the way out), none half-logged; the rerun resumes after
    update 2, and the log and the final state equal an uninterrupted run's (issue 19)."""
    import numpy as np

    import pipelines.router_synthetic as rs
    from roro_jax.cli import main
    from roro_jax.engines.openai_server import EndpointUnavailableError

    args = ["router", *BASE, "train.updates=4", "checkpoint.every=10"]
    assert main([*args, f"out_dir={tmp_path / 'ref'}"]) == 0
    capsys.readouterr()

    real = rs.make_collect
    url = "http://127.0.0.1:9/v1"

    def dying(learner, cfg):
        collect = real(learner, cfg)

        def step(params, key, k):
            if k == 2:  # update 3: the small model's server is gone
                raise EndpointUnavailableError(f"model 'small': request q/router/0/0/s failed after 5 attempts on "
                                               f"{url}; last error: APIConnectionError: Connection error.")
            return collect(params, key, k)
        return step

    monkeypatch.setattr(rs, "make_collect", dying)
    out = tmp_path / "run"
    assert main([*args, f"out_dir={out}"]) == 1
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("roro: error:")]
    assert len(errors) == 1 and url in errors[0] and "Traceback" not in err, err
    assert "updates 1..2 are checkpointed" in err and "rerun the same command to resume" in err
    assert [r["update"] for r in rows(out)] == [1, 2]
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2]  # saved on the way out (every=10 would have saved none)

    monkeypatch.setattr(rs, "make_collect", real)
    assert main([*args, f"out_dir={out}"]) == 0
    assert "resuming" in capsys.readouterr().out
    log, ref = rows(out), rows(tmp_path / "ref")
    assert [r["update"] for r in log] == [1, 2, 3, 4] and log[2]["resumed_from"] == 2
    for a, b in zip(log, ref):
        assert a["reward"] == b["reward"] and a["loss"] == b["loss"]
    for a, b in zip(_leaves(out, 4), _leaves(tmp_path / "ref", 4)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
