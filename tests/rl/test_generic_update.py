"""The generic update (``roro_jax.rl.update.make_update``): hyperparameters as data, one compile per sweep,
a policy loss by registered name."""

import logging
import re

import jax
import numpy as np
import pytest

from pipelines.router_synthetic import train_router_synthetic
from roro_jax.config import ConfigError, load_config
from roro_jax.rl.losses import POLICY_LOSSES, register_policy_loss

# a router shape no other test uses, so that the compile counted here is this test's own
BASE = ["synthetic.queries=16", "synthetic.steps=8", "synthetic.features=8", "router.hidden=[24,24]",
        "train.updates=2", "grpo.group_size=4", "grpo.minibatches=2"]


class Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.names = []

    def emit(self, record):
        m = re.match(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
        if m:
            self.names.append(m.group(1))


@pytest.fixture
def compiles():
    handler = Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    with jax.log_compiles(True):
        yield handler
    logger.removeHandler(handler)


def leaves(learner):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(learner.params))]


def test_a_method_by_lambda_sweep_compiles_the_update_once(compiles, tmp_path):
    """Six routers (two methods' reward weights x three lambda_c, each with its own learning rate and clip
    range) train with one compiled update; the values still act (different lr -> different parameters)."""
    runs = []
    for method_w in ({"outcome": 1.0}, {"outcome": 1.0, "escalations": 0.1}):
        for i, lam in enumerate((0.1, 0.5, 1.5)):
            w = [f"reward.weights.{k}={v}" for k, v in {**method_w, "cost": lam}.items()]
            cfg = load_config(None, BASE + w + [f"grpo.lr={1e-3 * (i + 1)}", f"grpo.clip_eps={0.1 + 0.05 * i}",
                                                f"out_dir={tmp_path / f'{len(runs)}'}"])
            learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
            runs.append((leaves(learner), hist))
    assert compiles.names.count("generic_update") == 1, compiles.names
    assert all(np.isfinite(h["loss"]) for _, hist in runs for h in hist)
    assert not np.array_equal(runs[0][0][0], runs[1][0][0])  # lr 1e-3 vs 2e-3 (and lambda_c): values act


def test_the_learning_rate_in_the_state_is_the_one_used(tmp_path):
    """Two learners share the compiled update; each trains with its own lr (not the first learner's)."""
    from roro_jax.rl.trainer import RouterLearner

    a = RouterLearner(load_config(None, BASE + ["grpo.lr=1e-3"]), 8)
    b = RouterLearner(load_config(None, BASE + ["grpo.lr=1e-2"]), 8)
    assert a._update is b._update
    rng = np.random.default_rng(0)
    batch = {"features": rng.standard_normal((8, 4, 8)).astype(np.float32), "actions": np.ones((8, 4), np.int32),
             "old_logp": np.full((8, 4), -0.7, np.float32), "mask": np.ones((8, 4), np.float32),
             "advantages": rng.standard_normal(8).astype(np.float32)}
    p0 = leaves(a)
    a.update(dict(batch), jax.random.PRNGKey(0))
    b.update(dict(batch), jax.random.PRNGKey(0))
    step_a = max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), p0))
    step_b = max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(b), p0))
    assert step_b > 5 * step_a > 0  # Adam: the step scales with lr


def test_a_registered_policy_loss_is_picked_by_name(tmp_path):
    """``grpo.loss=NAME`` trains with a registered loss; an unknown name is a config error naming the key."""
    calls = []

    @register_policy_loss("test_plain_pg")
    def plain_pg(logp, batch, hp):
        calls.append(1)
        m = batch["mask"]
        return {"loss_sum": -(batch["advantages"][:, None] * logp * m).sum(), "loss_den": m.sum()}

    try:
        cfg = load_config(None, BASE + ["grpo.loss=test_plain_pg", f"out_dir={tmp_path}"])
        learner, hist = train_router_synthetic(cfg, resume=False, progress=False)
        assert calls and all(np.isfinite(h["loss"]) for h in hist)
        ref, _ = train_router_synthetic(load_config(None, BASE + [f"out_dir={tmp_path / 'g'}"]), resume=False,
                                        progress=False)
        assert not np.array_equal(leaves(learner)[0], leaves(ref)[0])
    finally:
        POLICY_LOSSES.pop("test_plain_pg")
    with pytest.raises(ConfigError, match=r"grpo.loss.*unknown policy loss 'nope'"):
        load_config(None, ["grpo.loss=nope"])


def test_a_resume_that_changes_the_learning_rate_trains_with_the_new_one(tmp_path):
    """The learning rate lives in the checkpointed optimiser state; a resume allowed to change ``grpo.lr``
    (``checkpoint.allow_config_change``) must use the config's value, not the checkpoint's."""
    cfg = load_config(None, BASE + [f"out_dir={tmp_path}", "grpo.lr=1e-3"])
    train_router_synthetic(cfg, resume=False, stop_after=1, progress=False)
    cfg2 = load_config(None, BASE + [f"out_dir={tmp_path}", "grpo.lr=5e-2", "grpo.clip_eps=0.3",
                                     "checkpoint.allow_config_change=true"])
    with pytest.warns(UserWarning, match="grpo.lr"):
        learner, hist = train_router_synthetic(cfg2, resume=True, progress=False)
    assert [h["update"] for h in hist] == [2]
    assert float(learner.state.opt_state.hyperparams["learning_rate"]) == pytest.approx(5e-2)
    assert float(learner.state.hparams["clip_eps"]) == pytest.approx(0.3)
