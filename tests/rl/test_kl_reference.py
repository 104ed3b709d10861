"""KL to a reference policy for the router (``grpo.beta``, ``grpo.kl``, ``grpo.reference``)."""

import json

import jax
import numpy as np
import pytest

from pipelines.router_synthetic import train_router_synthetic
from roro_jax.cli import main
from roro_jax.config import ConfigError, load_config
from roro_jax.rl.trainer import RouterLearner

BASE = ["synthetic.queries=32", "synthetic.steps=12", "synthetic.features=8", "router.hidden=[32,32]",
        "grpo.lr=1e-3"]
KL = BASE + ["grpo.beta=0.1"]


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def log_of(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def distance(a, b):
    return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(leaves(a), leaves(b)))))


@pytest.fixture(scope="module")
def single_kl_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kl_single")
    cfg = load_config(None, KL + ["train.updates=4", f"out_dir={out}"])
    learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
    return learner, hist, out


def test_beta_changes_the_run_and_logs_the_kl(single_kl_run, tmp_path):
    learner, hist, out = single_kl_run
    cfg0 = load_config(None, BASE + ["train.updates=4", f"out_dir={tmp_path}"])
    plain, hist0 = train_router_synthetic(cfg0, resume=False, progress=False)
    # same seed: the first update's collection is identical, so the difference is the KL term
    assert hist[0]["reward"] == hist0[0]["reward"]
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(learner.params), leaves(plain.params)))
    log = log_of(out)
    assert [r["update"] for r in log] == [1, 2, 3, 4]
    assert all("kl_ref" in r and np.isfinite(r["kl_ref"]) for r in log)
    assert all("kl_ref" not in r for r in log_of(tmp_path))  # beta = 0: no KL term, nothing to log
    assert plain.state.ref_params is None and learner.state.ref_params is not None


def test_kl_is_zero_before_the_first_step_and_grows(tmp_path):
    """One optimiser step per update: update 1's loss is taken at the initial parameters (== the reference)."""
    cfg = load_config(None, KL + ["train.updates=5", "grpo.epochs=1", "grpo.minibatches=1", f"out_dir={tmp_path}"])
    _, hist = train_router_synthetic(cfg, resume=False, progress=False)
    kl = [h["kl_ref"] for h in hist]
    assert abs(kl[0]) < 1e-8, kl  # 0 up to float rounding (the two log-probs are separate XLA fusions)
    assert all(k > 1e-5 for k in kl[1:]) and kl[-1] > kl[1], kl


def _np_kl(name, lp, rp):
    lp, rp = lp.astype(np.float64), rp.astype(np.float64)
    if name == "k1":
        return lp - rp
    if name == "k2":
        return 0.5 * (rp - lp) ** 2
    if name == "k3":
        return np.exp(rp - lp) - (rp - lp) - 1.0
    p, q = np.exp(lp), np.exp(rp)
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


@pytest.mark.parametrize("kl", ["k1", "k2", "k3", "exact"])
def test_kl_term_matches_numpy(kl):
    beta = 0.5
    cfg = load_config(None, BASE + [f"grpo.beta={beta}", f"grpo.kl={kl}", "grpo.epochs=1", "grpo.minibatches=1"])
    learner = RouterLearner(cfg, 8)
    rng = np.random.default_rng(0)
    ref = jax.device_get(learner.state.ref_params)
    moved = jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype), ref)
    learner.state = learner.state.replace(params=jax.tree.map(np.asarray, moved))
    B, T = 8, 5
    feats = rng.standard_normal((B, T, 8)).astype(np.float32)
    actions = rng.integers(0, 2, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.float32)
    mask[1, 3:] = 0
    mask[5, 1:] = 0
    lp = np.asarray(learner.logp(feats, actions, moved))
    rp = np.asarray(learner.logp(feats, actions, ref))
    batch = {"features": feats, "actions": actions, "old_logp": lp * mask, "mask": mask,
             "advantages": rng.standard_normal(B).astype(np.float32)}
    metrics = learner.update(batch, jax.random.PRNGKey(0))
    want = float(np.sum(_np_kl(kl, lp, rp) * mask) / mask.sum())
    assert abs(want) > 1e-3  # the policy was moved away from the reference
    np.testing.assert_allclose(float(metrics["kl_ref"]), want, rtol=1e-4, atol=1e-6)
    # token-mean aggregation: loss = pg_loss + beta * KL
    np.testing.assert_allclose(float(metrics["loss"]) - float(metrics["pg_loss"]), beta * want, rtol=1e-4,
                               atol=1e-6)


def test_beta_keeps_the_router_closer_to_its_initial_parameters(tmp_path):
    n = ["train.updates=12", "grpo.lr=3e-3", "reward.weights.cost=0.5"]
    runs = {}
    for beta in (0.0, 1.0):
        cfg = load_config(None, BASE + n + [f"grpo.beta={beta}", f"out_dir={tmp_path / str(beta)}"])
        learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
        init = RouterLearner(cfg, 8).params
        runs[beta] = distance(learner.params, init)
    print(f"distance from the initial parameters: beta=0 {runs[0.0]:.4f}, beta=1 {runs[1.0]:.4f}")
    assert runs[1.0] < 0.8 * runs[0.0]


@pytest.mark.parametrize("mode", ["shard_map", "pmap", "jit_sharded"])
def test_eight_devices_match_one_with_kl(mode, single_kl_run, tmp_path):
    assert jax.device_count() == 8, "tests run with 8 simulated CPU devices (see tests/conftest.py)"
    ref_learner, ref_hist, _ = single_kl_run
    cfg = load_config(None, KL + ["train.updates=4", f"out_dir={tmp_path}", f"parallel.mode={mode}"])
    learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
    assert learner.mesh.devices.size == 8
    for a, b in zip(leaves(ref_learner.params), leaves(learner.params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose([h["kl_ref"] for h in hist], [h["kl_ref"] for h in ref_hist], atol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in ref_hist], atol=1e-5)


def test_resume_keeps_the_reference(single_kl_run, tmp_path):
    """2 updates, then resume for 2 more == 4 straight, bit for bit: the reference is restored from the
    checkpoint (the initial router), not rebuilt from the restored parameters."""
    full, full_hist, _ = single_kl_run
    cfg = load_config(None, KL + ["train.updates=4", f"out_dir={tmp_path}", "checkpoint.every=2"])
    first, _ = train_router_synthetic(cfg, resume=False, stop_after=2, progress=False)
    init_ref = leaves(first.state.ref_params)
    resumed, hist = train_router_synthetic(cfg, resume=True, progress=False)
    assert [h["update"] for h in hist] == [3, 4]
    for a, b in zip(leaves(full.params), leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(init_ref, leaves(resumed.state.ref_params)):
        np.testing.assert_array_equal(a, b)
    assert [h["kl_ref"] for h in hist] == [h["kl_ref"] for h in full_hist[2:]]


def test_a_registered_reference_is_used(tmp_path):
    from roro_jax.rl.reference import REFERENCES, register_reference

    register_reference("shifted_test", lambda p: jax.tree.map(lambda x: x + 0.5, p))
    try:
        cfg = load_config(None, KL + ["grpo.reference=shifted_test", "train.updates=1", "grpo.epochs=1",
                                      "grpo.minibatches=1", f"out_dir={tmp_path}"])
        _, hist = train_router_synthetic(cfg, resume=False, progress=False)
        assert hist[0]["kl_ref"] > 1e-6  # the reference is not the initial router (that gives < 1e-8)
    finally:
        REFERENCES.pop("shifted_test")


@pytest.mark.parametrize("overrides,says", [
    (["grpo.beta=0.1", "grpo.reference=none"], r"config key 'grpo.beta' \(command line\): 0.1 weights the KL to a "
                                               r"reference policy, but grpo.reference=none gives none"),
    (["grpo.reference=ema"], r"config key 'grpo.reference' \(command line\): unknown reference policy 'ema'; "
                             r"registered: \['init', 'none'\]"),
])
def test_a_setting_that_cannot_apply_is_a_config_error(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, overrides)


def test_cli_beta_without_reference_is_one_error_line(tmp_path, capsys):
    assert main(["router", f"out_dir={tmp_path}", "grpo.beta=0.1", "grpo.reference=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("roro: error:") and "grpo.beta" in err[0]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_reference_none_with_beta_zero_trains_without_kl():
    cfg = load_config(None, BASE + ["grpo.reference=none"])
    assert RouterLearner(cfg, 8).state.ref_params is None


def test_the_update_refuses_beta_without_any_reference():
    """Library use: a state without a reference and a batch without ``ref_logp`` under beta > 0 is an error,
    not a silent update without the KL term."""
    from roro_jax.rl.update import init_state

    cfg = load_config(None, KL + ["grpo.minibatches=1"])
    learner = RouterLearner(cfg, 8)
    learner.state = init_state(learner.params, learner.tx)  # no ref_params
    batch = {"features": np.zeros((4, 3, 8), np.float32), "actions": np.zeros((4, 3), np.int32),
             "old_logp": np.zeros((4, 3), np.float32), "mask": np.ones((4, 3), np.float32),
             "advantages": np.zeros(4, np.float32)}
    with pytest.raises(ValueError, match="grpo.beta=0.1 needs a reference"):
        learner.update(batch, jax.random.PRNGKey(0))


def test_training_on_a_store_adds_the_kl(tmp_path):
    """``train_on_store`` (the store-fed training of the replay/live collections) runs the same update."""
    from roro_jax.rl.stream import train_on_store
    from roro_jax.router.features import get_family
    from roro_jax.store import TrajectoryStore
    from roro_jax.types import ESCALATE, Step, Trajectory

    cfg = load_config(None, ["grpo.beta=0.1", "grpo.group_size=4", "grpo.minibatches=2", "grpo.epochs=2",
                             "router.hidden=[16]", "rollout.max_steps=3"])
    F = get_family(cfg.router.features).dim
    rng = np.random.default_rng(0)

    def traj(q, g):
        acts = rng.integers(0, 2, 3)
        steps = [Step(index=i, text="s\n\n", token_ids=[1, 2], action=int(a), action_logp=-0.7,
                      features=rng.standard_normal(F).tolist(), small_tokens=2, large_tokens=2 * int(a),
                      model="large" if a == ESCALATE else "small") for i, a in enumerate(acts)]
        return Trajectory(query_id=q, sample_idx=g, policy_id="p", steps=steps, correct=bool(rng.random() < 0.5))

    store = TrajectoryStore(tmp_path / "s.jsonl")
    store.add_many(traj(f"q{q}", g) for q in range(8) for g in range(4))
    learner = RouterLearner(cfg, F)
    hist = train_on_store(learner, tmp_path / "s.jsonl", cfg, groups_per_batch=4)
    assert len(hist) == 2 and all(np.isfinite(h["kl_ref"]) for h in hist) and hist[-1]["kl_ref"] > 0


def test_a_run_folder_from_before_grpo_reference_still_resumes(tmp_path):
    """A run saved before ``grpo.reference`` existed (its config.yaml lacks the key) resumes: an absent key
    counts as its default; another value than the default is still a change."""
    from omegaconf import OmegaConf

    from roro_jax.rl.run_dir import RUN_CONFIG, config_changes

    cfg = load_config(None, BASE + ["train.updates=2", f"out_dir={tmp_path}"])
    train_router_synthetic(cfg, resume=False, stop_after=1, progress=False)
    saved = OmegaConf.to_container(OmegaConf.load(tmp_path / RUN_CONFIG))
    del saved["grpo"]["reference"]
    (tmp_path / RUN_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    _, hist = train_router_synthetic(cfg, resume=True, progress=False)
    assert [h["update"] for h in hist] == [2]
    assert config_changes(saved, load_config(None, BASE + ["train.updates=2", f"out_dir={tmp_path}",
                                                           "grpo.reference=none"])) == \
        [("grpo.reference", "init", "none")]
