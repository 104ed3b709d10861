"""The jitted update: data-parallel equivalence, checkpoint/resume, learning."""

import json
import shutil

import jax
import numpy as np
import pytest

from pipelines.router_synthetic import escalation_auc, train_router_synthetic
from roro_jax.config import load_config
from roro_jax.rl.trainer import RouterLearner

BASE = ["synthetic.queries=32", "synthetic.steps=12", "synthetic.features=8", "router.hidden=[32,32]",
        "grpo.lr=1e-3"]


def params_of(learner):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(learner.params))]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    cfg = load_config(None, BASE + ["train.updates=4", f"out_dir={out}", "parallel.mode=single"])
    learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
    return params_of(learner), hist


@pytest.mark.parametrize("mode", ["shard_map", "pmap", "jit_sharded"])
def test_eight_devices_match_one(mode, single_run, tmp_path):
    assert jax.device_count() == 8, "tests run with 8 simulated CPU devices (see tests/conftest.py)"
    cfg = load_config(None, BASE + ["train.updates=4", f"out_dir={tmp_path}", f"parallel.mode={mode}"])
    learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
    ref_params, ref_hist = single_run
    for a, b in zip(ref_params, params_of(learner)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert not np.array_equal(ref_params[0], params_of(RouterLearner(cfg, 8))[0])  # it did train
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in ref_hist], atol=1e-5)


def test_resume_is_bit_identical(tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    cfg_full = load_config(None, BASE + ["train.updates=6", f"out_dir={full_dir}"])
    full, _ = train_router_synthetic(cfg_full, resume=False, progress=False)
    cfg_cut = load_config(None, BASE + ["train.updates=6", f"out_dir={cut_dir}", "checkpoint.every=2"])
    stopped, hist1 = train_router_synthetic(cfg_cut, resume=False, stop_after=3, progress=False)
    assert len(hist1) == 3
    # the run "dies" after update 3; the newest checkpoint is step 3 (forced at the stop), keep 3 -> [1?..3]
    resumed, hist2 = train_router_synthetic(cfg_cut, resume=True, progress=False)
    assert [h["update"] for h in hist2] == [4, 5, 6]
    for a, b in zip(params_of(full), params_of(resumed)):
        np.testing.assert_array_equal(a, b)
    log = (cut_dir / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 6  # no duplicated and no missing log lines


def test_resume_from_older_checkpoint_after_crash(tmp_path):
    """Kill mid-run (no final save): resume from the last periodic checkpoint, same final params."""
    cfg = load_config(None, BASE + ["train.updates=5", f"out_dir={tmp_path / 'a'}"])
    full, _ = train_router_synthetic(cfg, resume=False, progress=False)
    cfg_b = load_config(None, BASE + ["train.updates=5", f"out_dir={tmp_path / 'b'}", "checkpoint.every=2"])
    train_router_synthetic(cfg_b, resume=False, stop_after=4, progress=False)
    ckpt_dir = tmp_path / "b" / "checkpoints"
    shutil.rmtree(ckpt_dir / "4")  # as if killed before the forced save at update 4 completed
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"update": 5, "rew')  # and the metrics log ends in a torn line
    with pytest.warns(RuntimeWarning, match="torn last line dropped on resume"):
        resumed, hist = train_router_synthetic(cfg_b, resume=True, progress=False)
    assert [h["update"] for h in hist] == [3, 4, 5]
    for a, b in zip(params_of(full), params_of(resumed)):
        np.testing.assert_array_equal(a, b)
    log = [json.loads(ln)["update"] for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5]


def test_router_learns_to_escalate_low_confidence_steps(tmp_path):
    cfg = load_config(None, ["synthetic.queries=32", "synthetic.steps=12", "synthetic.features=8",
                             "router.hidden=[32,32]", "grpo.lr=3e-3", "train.updates=25",
                             "reward.weights.cost=0.5", f"out_dir={tmp_path}"])
    learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
    auc = escalation_auc(learner, cfg)
    print(f"escalation AUC critical vs non-critical: {auc:.3f}; reward {hist[0]['reward']:.3f} -> "
          f"{hist[-1]['reward']:.3f}")
    assert auc > 0.9
    assert np.mean([h["reward"] for h in hist[-5:]]) > hist[0]["reward"] + 0.2


def test_batch_validation():
    cfg = load_config(None, BASE)
    learner = RouterLearner(cfg, 8)
    with pytest.raises(KeyError, match="missing"):
        learner.update({"features": np.zeros((8, 4, 8), np.float32)}, jax.random.PRNGKey(0))
    bad = {"features": np.zeros((6, 4, 8), np.float32), "actions": np.zeros((6, 4), np.int32),
           "old_logp": np.zeros((6, 4), np.float32), "mask": np.ones((6, 4), np.float32),
           "advantages": np.zeros(6, np.float32)}
    with pytest.raises(ValueError, match="minibatches"):
        learner.update(bad, jax.random.PRNGKey(0))


def test_fresh_run_replaces_old_checkpoints(tmp_path):
    cfg = load_config(None, BASE + ["train.updates=2", f"out_dir={tmp_path}"])
    first, _ = train_router_synthetic(cfg, resume=False, progress=False)
    again, hist = train_router_synthetic(cfg, resume=False, progress=False)  # must not clash with step 2
    assert [h["update"] for h in hist] == [1, 2]
    for a, b in zip(params_of(first), params_of(again)):
        np.testing.assert_array_equal(a, b)  # same seed, same run


def test_non_finite_host_batch_rejected_before_the_jitted_update():
    from roro_jax.rl.update import validate_batch

    rng = np.random.default_rng(0)
    batch = {"features": rng.standard_normal((4, 3, 2)).astype(np.float32), "actions": np.zeros((4, 3), np.int32),
             "old_logp": np.zeros((4, 3), np.float32), "mask": np.ones((4, 3), np.float32),
             "advantages": np.zeros(4, np.float32)}
    validate_batch(batch, 2)
    batch["features"][2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"batch\['features'\] has a non-finite value nan at index \[2, 1, 0\]"):
        validate_batch(batch, 2)
    batch["features"][2, 1, 0] = 0.0
    batch["advantages"][3] = np.inf
    with pytest.raises(ValueError, match=r"batch\['advantages'\].*index \[3\]"):
        validate_batch(batch, 2)


@pytest.mark.parametrize("mode", ["pmap", "shard_map", "jit_sharded"])
def test_parallel_devices_is_honoured(mode, tmp_path):
    """``parallel.devices=3`` uses 3 devices in every data-parallel mode (pmap used all 8 before): a batch of
    48 trajectories in 4 minibatches of 12 splits over 3 devices, not over 8, and matches one device."""
    small = BASE[1:] + ["synthetic.queries=6", "train.updates=2"]
    ref, _ = train_router_synthetic(load_config(None, small + [f"out_dir={tmp_path / 'single'}"]), resume=False,
                                    progress=False)
    cfg = load_config(None, small + [f"out_dir={tmp_path / mode}", f"parallel.mode={mode}", "parallel.devices=3"])
    learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
    assert learner.mesh.devices.size == 3
    for a, b in zip(params_of(ref), params_of(learner)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _batch(b=8, t=4, f=8):
    return {"features": np.zeros((b, t, f), np.float32), "actions": np.zeros((b, t), np.int32),
            "old_logp": np.zeros((b, t), np.float32), "mask": np.ones((b, t), np.float32),
            "advantages": np.zeros(b, np.float32)}


@pytest.mark.parametrize("change,says", [
    (lambda b: b.__setitem__("actions", b["actions"] + 2), r"batch\['actions'\] has 2 at index \[0, 0\]"),
    (lambda b: b.__setitem__("actions", b["actions"].astype(np.float32)), r"batch\['actions'\] has dtype float32"),
    (lambda b: b.__setitem__("mask", np.ones((16, 5), np.float32)), r"batch\['mask'\] has shape \(16, 5\)"),
    (lambda b: b.__setitem__("features", np.zeros((8, 4), np.float32)), r"batch\['features'\] has shape \(8, 4\)"),
    (lambda b: b.__setitem__("advantages", np.zeros((8, 4), np.float32)), r"batch\['advantages'\] has shape"),
])
def test_invalid_batches_name_the_key(change, says):
    """Invalid actions (2 gave loss nan, floats passed) and shape errors (a bare chex 'input 0 has shape')
    are errors naming the batch key, raised before the jitted update."""
    learner = RouterLearner(load_config(None, BASE + ["grpo.minibatches=2"]), 8)
    batch = _batch()
    learner.update(_batch(), jax.random.PRNGKey(0))  # the valid batch trains
    change(batch)
    with pytest.raises(ValueError, match=says):
        learner.update(batch, jax.random.PRNGKey(0))
