"""The toy world's RoRo pipeline with the shipped toy models: rewards, router training, resume, the demo."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from pipelines import toy as T
from pipelines.demo import demo_config, run_demo
from roro_jax.config import load_config
from roro_jax.pairs import process_quality
from roro_jax.rl.trainer import score_trajectories
from roro_jax.router.baselines import ConfidenceThreshold, RandomPolicy
from roro_jax.types import ESCALATE, KEEP, Step, Trajectory

TOY = ["world=toy", "rollout.max_steps=8", "rollout.max_step_tokens=16", "rollout.temperature=0.7",
       "toy.max_batch=32", "router.hidden=[32,32]", "grpo.group_size=4", "grpo.adv_scale=batch", "grpo.lr=3e-3",
       "grpo.minibatches=2", "toy.queries_per_update=4"]


@pytest.fixture(scope="module")
def cfg0(tmp_path_factory):
    return load_config(None, TOY + [f"out_dir={tmp_path_factory.mktemp('toy')}"])


@pytest.fixture(scope="module")
def engines(cfg0):
    return T.make_engines(cfg0)


def _traj(q, g, acts, correct, *, tokens=4):
    steps = [Step(index=i, text="x", token_ids=[1] * tokens, model="large" if a else "small", action=a,
                  small_tokens=tokens, large_tokens=tokens if a else 0, confidence=0.9) for i, a in enumerate(acts)]
    return Trajectory(query_id=q, sample_idx=g, policy_id="p", steps=steps, correct=correct)


def test_combined_reward_and_advantages_by_hand():
    """outcome + λ_p·process − λ_c·share, then batch-scaled group advantages, on a constructed batch."""
    trajs = [_traj("a", 0, [KEEP, KEEP], True), _traj("a", 1, [ESCALATE, KEEP], True),
             _traj("b", 0, [ESCALATE, ESCALATE], True), _traj("b", 1, [KEEP, ESCALATE], False)]
    process = np.array([0.2, 0.9, 0.5, 0.1], np.float32)
    rb = T.reward_batch(trajs, lambda ts: process[[trajs.index(t) for t in ts]])
    np.testing.assert_allclose(rb["large_share"], [0.0, 0.5, 1.0, 0.5])
    np.testing.assert_allclose(rb["correct"], [1, 1, 1, 0])
    cfg = load_config(None, ["reward.weights={outcome: 1.0, process: 0.5, cost: 0.4}", "grpo.group_size=2",
                             "grpo.adv_scale=batch"])
    rewards, terms, adv = score_trajectories(rb, cfg)
    want = np.array([1 + 0.1 - 0.0, 1 + 0.45 - 0.2, 1 + 0.25 - 0.4, 0 + 0.05 - 0.2])
    np.testing.assert_allclose(np.asarray(rewards), want, rtol=1e-6)
    centred = want - np.repeat(want.reshape(2, 2).mean(1), 2)
    # "batch" scaling: centred by the group mean, divided by the std (ddof 1) of all rewards in the batch
    np.testing.assert_allclose(np.asarray(adv), centred / (want.std(ddof=1) + cfg.grpo.adv_eps), rtol=1e-5)
    assert set(terms) == {"outcome", "process", "cost"}
    with pytest.raises(ValueError, match="shape"):
        T.reward_batch(trajs, lambda ts: np.zeros(3))


def test_route_many_equals_routing_one_by_one(cfg0, engines):
    problems = T.test_problems(cfg0)[:6]
    pols = [RandomPolicy(0.4, seed=1), ConfidenceThreshold(0.99)]
    together = T.route_many(cfg0, engines, problems, pols, seed=5, progress=False)
    for pol in pols:
        alone = T.route(cfg0, engines, problems, pol, seed=5)
        assert [t.to_dict() for t in alone] == [t.to_dict() for t in together[pol.policy_id]]
    with pytest.raises(ValueError, match="duplicate"):
        T.route_many(cfg0, engines, problems, [pols[0], pols[0]], progress=False)


def _params(learner):
    return jax.tree.map(np.asarray, learner.params)


def test_short_training_improves_reward_on_a_fixed_set(cfg0, engines, tmp_path):
    """8 GRPO updates (outcome − 0.5·share) on 8 fixed toy problems: the mean reward of the sampled policy
    on those problems (G=8 fresh samples each, same seeds before and after) goes up."""
    cfg = dataclasses.replace(load_config(None, TOY + ["train.updates=8", "reward.weights={outcome: 1.0, cost: 0.5}"]),
                              out_dir=str(tmp_path))
    problems = T.train_problems(cfg)[:8]
    learner, hist = T.train_router_toy(cfg, engines, problems=problems, progress=False)
    assert len(hist) == 8 and all(np.isfinite(h["reward"]) for h in hist)

    def mean_reward(params):
        from roro_jax.router.policies import RouterPolicy

        trajs = T.route(cfg, engines, problems, RouterPolicy(learner, params), group_size=8, seed=99)
        rewards, _, _ = score_trajectories(T.reward_batch(trajs), dataclasses.replace(
            cfg, grpo=dataclasses.replace(cfg.grpo, group_size=8)))
        return float(np.mean(rewards))

    from roro_jax.rl.trainer import RouterLearner
    from roro_jax.router.features import get_family

    init = RouterLearner(cfg, get_family(cfg.router.features).dim).params  # same seed: the starting point
    before, after = mean_reward(init), mean_reward(learner.params)
    print(f"fixed-set mean reward: before {before:.3f} after {after:.3f}")
    assert after > before + 0.05


def test_resume_after_interruption_reproduces_the_run(cfg0, engines, tmp_path):
    def cfg_at(d):
        return dataclasses.replace(load_config(None, TOY + ["train.updates=3", "reward.weights={outcome: 1.0, "
                                                             "cost: 0.3, process: 0.5}"]), out_dir=str(d))

    problems = T.train_problems(cfg0)[:6]
    proc = lambda ts: np.array([process_quality(t) for t in ts])  # the rule-based score: a real scorer
    full, hist_full = T.train_router_toy(cfg_at(tmp_path / "full"), engines, problems=problems, process_fn=proc,
                                         progress=False)
    _, part = T.train_router_toy(cfg_at(tmp_path / "cut"), engines, problems=problems, process_fn=proc,
                                 stop_after=1, progress=False)
    resumed, rest = T.train_router_toy(cfg_at(tmp_path / "cut"), engines, problems=problems, process_fn=proc,
                                       progress=False)
    assert len(part) == 1 and len(rest) == 2
    jax.tree.map(np.testing.assert_array_equal, _params(full), _params(resumed))
    assert [h["reward"] for h in hist_full] == [h["reward"] for h in part + rest]
    assert all("reward/process" in h for h in hist_full)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["update"] for ln in lines] == [1, 2, 3]


def test_process_weight_needs_a_scorer(cfg0, engines, tmp_path):
    cfg = dataclasses.replace(load_config(None, TOY + ["reward.weights={outcome: 1.0, process: 0.5}"]),
                              out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="process scorer"):
        T.train_router_toy(cfg, engines, problems=T.train_problems(cfg)[:2], progress=False)


def test_quick_demo_runs_every_stage(tmp_path):
    """``roro demo --quick`` on the toy world: every stage writes its outputs, every method is reported.
    Smaller than ``--quick`` where the size does not matter to what is checked (what each stage writes):
    the user's overrides win over the quick settings, as on the command line."""
    smaller = ["toy.explore_problems=12", "rubric.judge.steps=4", "rubric.rubricor.sft_steps=4",
               "rubric.rubricor.grpo_queries=2", "rubric.rubricor.max_new_tokens=48", "rubric.gate.min_pairs=1"]
    cfg = demo_config("configs/demo.yaml", [f"out_dir={tmp_path}", *smaller], quick=True)
    assert cfg.world == "toy" and cfg.train.updates == 3 and cfg.toy.explore_problems == 12
    res = run_demo(cfg, progress=False)
    assert (tmp_path / "exploration" / "trajectories.jsonl").stat().st_size > 0
    pairs = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert pairs and all(json.loads(p)["kind"] in ("outcome", "cost", "process") for p in pairs)
    gate = [json.loads(ln) for ln in (tmp_path / "rubric" / "gate.jsonl").read_text().splitlines()]
    assert [g["phase"] for g in gate] == ["judge", "rubricor"]
    for method in ("GRPO", "RoRo"):
        log_path = tmp_path / "routers" / f"{method}_lc0.3" / "metrics.jsonl"
        log = [json.loads(ln) for ln in log_path.read_text().splitlines()]
        assert len(log) == 3
        assert ("reward/process" in log[0]) == (method == "RoRo")
    summary = res["summary"]
    reported = {m["method"] for m in summary["methods"]} | {summary["srm"]["method"], summary["lrm"]["method"]}
    assert reported == {"SRM-only", "LRM-only", "random", "confidence-threshold", "STEER", "GRPO (outcome+cost)",
                        "RoRo (outcome+process+cost)"}
    assert summary["lrm"]["accuracy"] > summary["srm"]["accuracy"]
    for name in ("report.md", "curves.png", "summary.json", "points.jsonl"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "RoRo (outcome+process+cost)" in (tmp_path / "report" / "report.md").read_text()


def test_live_world_inputs(tmp_path):
    """The live world's inputs: a seeded benchmark split, the prompt template, engines from the config."""
    from pipelines import live

    from roro_jax.tasks import toy

    probs = toy.generate(10, seed=1, split="test")
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in probs))
    cfg = load_config(None, ["world=live", f"live.benchmark={bench}", "live.train_frac=0.6", "live.test_problems=3",
                             "live.prompt_template='Q: {question} ='"])
    train, test = live.train_problems(cfg), live.test_problems(cfg)
    assert len(train) == 6 and len(test) == 3
    assert not {p.id for p in train} & {p.id for p in live._split(cfg)[1]}
    assert live.prompt_fn(cfg)(train[0]) == f"Q: {train[0].question} ="
    assert T.prompt_fn(cfg)(train[0]) == live.prompt_fn(cfg)(train[0])
    with pytest.raises(ValueError, match="engines.small.model"):
        live.make_engines(cfg)
    from roro_jax.worlds.toy import toy_model_dir

    cfg = load_config(None, ["world=live", f"engines.small.model={toy_model_dir('small')}",
                             f"engines.large.model={toy_model_dir('large')}"])
    eng = live.make_engines(cfg)
    assert eng.small.n_params == eng.large.n_params > 0


def test_process_scorers_registry():
    from pipelines.rubric import PROCESS_SCORERS, process_scorer

    trajs = [_traj("a", 0, [KEEP, ESCALATE], True), _traj("a", 1, [ESCALATE, ESCALATE], True)]
    rule = process_scorer("rule", {}, {"a": "1 + 2"})(trajs)
    np.testing.assert_allclose(rule, [process_quality(t) for t in trajs])
    assert {"judge", "no_rubric_judge", "rule"} <= set(PROCESS_SCORERS)
    with pytest.raises(KeyError, match="unknown process scorer"):
        process_scorer("nope", {}, {})
    with pytest.raises(ValueError, match="no_rubric_baseline"):
        process_scorer("no_rubric_judge", {}, {})


def test_toy_router_with_kl_to_the_reference(cfg0, engines, tmp_path):
    """``grpo.beta > 0`` in the toy world: the KL to the initial router is in the loss and the log."""
    cfg = dataclasses.replace(load_config(None, TOY + ["train.updates=2", "grpo.beta=0.5",
                                                       "reward.weights.process=0"]), out_dir=str(tmp_path))
    learner, hist = T.train_router_toy(cfg, engines, problems=T.train_problems(cfg0)[:4], progress=False)
    log = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in log] == [1, 2] and all(np.isfinite(r["kl_ref"]) for r in log)
    assert log[-1]["kl_ref"] > 0 and learner.state.ref_params is not None
