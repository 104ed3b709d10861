"""The replay pipeline end to end: router GRPO on episodes, baselines, reports (estimates labelled)."""

import json
import warnings

import jax
import numpy as np
import pytest

from pipelines.replay import make_collect, run_replay, split_indices, train_router_replay
from roro_jax.config import load_config
from roro_jax.paths import REPO_ROOT
from roro_jax.rl.trainer import RouterLearner
from roro_jax.worlds import ReplayWorld


def _episode(i, rng):
    ns, nl = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    sc, lc = bool(rng.random() < 0.5), bool(rng.random() < 0.9)
    return {"id": f"p{i}", "dataset": "fixture", "query": f"q{i}", "answer": "1",
            "srm_steps": [f"s{j}" for j in range(ns)], "srm_prm_scores": rng.uniform(0.1, 1, ns).round(3).tolist(),
            "srm_token_counts": rng.integers(5, 50, ns).tolist(), "srm_total_tokens": 0, "srm_answer": "1",
            "srm_correct": sc, "lrm_steps": [f"l{j}" for j in range(nl)],
            "lrm_prm_scores": rng.uniform(0.5, 1, nl).round(3).tolist(),
            "lrm_token_counts": rng.integers(5, 50, nl).tolist(), "lrm_total_tokens": 0, "lrm_answer": "1",
            "lrm_correct": lc, "mixed_correct": True}


@pytest.fixture()
def episodes(tmp_path):
    rng = np.random.default_rng(0)
    rows = [_episode(i, rng) for i in range(40)]
    for r in rows:
        r["srm_total_tokens"], r["lrm_total_tokens"] = sum(r["srm_token_counts"]), sum(r["lrm_token_counts"])
    (tmp_path / "eps").mkdir()
    path = tmp_path / "eps" / "fix_small_large.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg_for(episodes, out, extra=()):
    return load_config(REPO_ROOT / "configs/replay_math500.yaml",
                       [f"replay.episodes={episodes}", "replay.extra_test=[]", f"out_dir={out}", "train.updates=3",
                        "replay.queries_per_update=8", "grpo.group_size=4", "sweep.lambda_c=[0.1]",
                        "eval.n_boot=50", "reward.weights.process=0", *extra])


def test_collect_builds_a_valid_grpo_batch(episodes, tmp_path):
    cfg = cfg_for(episodes, tmp_path)
    world = ReplayWorld(episodes)
    train_idx, test_idx = split_indices(len(world), cfg.replay.train_frac, cfg.replay.split_seed)
    assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == len(world)
    learner = RouterLearner(cfg, world.feature_family.dim)
    batch, info = make_collect(learner, world, train_idx, cfg)(learner.params, None, 0)
    N, T = 8 * 4, world.max_steps
    assert batch["features"].shape == (N, T, 5) and batch["mask"].shape == (N, T)
    assert np.all(batch["old_logp"][batch["mask"] == 0] == 0) and np.all(batch["old_logp"] <= 0)
    adv = batch["advantages"].reshape(8, 4)
    np.testing.assert_allclose(adv.sum(1), 0.0, atol=1e-5)  # group-centred
    assert 0.0 <= info["accuracy"] <= 1.0 and 0.0 <= info["large_share"] <= 1.0
    # same update index -> same batch (seeded), so resumed runs see the same data
    batch2, _ = make_collect(learner, world, train_idx, cfg)(learner.params, None, 0)
    np.testing.assert_array_equal(batch["actions"], batch2["actions"])


def test_replay_pipeline_writes_labelled_reports(episodes, tmp_path):
    cfg = cfg_for(episodes, tmp_path)
    res = run_replay(cfg, progress=False)
    report = res["math500_heldout"]["report"].read_text()
    assert "estimate" in report and "GRPO outcome-only" in report and "TRIM-Thr" in report and "STEER" in report
    assert res["math500_heldout"]["plot"].stat().st_size > 10_000
    log = (tmp_path / "router_lc0.1" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 3 and "reward/cost" in json.loads(log[0])


@pytest.mark.shared_data
def test_replay_on_real_episodes(tmp_path):
    cfg = load_config(REPO_ROOT / "configs/replay_math500.yaml",
                      [f"out_dir={tmp_path}", "train.updates=2", "sweep.lambda_c=[0.1]", "eval.n_boot=50",
                       "reward.weights.process=0"])
    learner, hist = train_router_replay(cfg, progress=False)
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) for h in hist)
    res = run_replay(cfg, progress=False)
    assert set(res) == {"math500_heldout", "aime2025"}
    summary = json.loads(res["aime2025"]["summary"].read_text())
    print(json.dumps({k: summary[k] for k in summary if k in ("endpoints",)}, default=str)[:500])
    assert "≈" in res["aime2025"]["report"].read_text()


def test_replay_pipeline_trains_roro_with_the_judge(episodes, tmp_path):
    """reward.weights.process > 0: the rubric stage runs on the training episodes, RoRo routers train on
    the Judge's scores (logged as reward/process) and are reported beside outcome-only GRPO."""
    cfg = cfg_for(episodes, tmp_path, ["reward.weights.process=0.5", "rubric.rounds=1", "rubric.judge.steps=4",
                                       "rubric.no_rubric_baseline=false", "rubric.rubricor.sft_steps=4",
                                       "rubric.rubricor.grpo_steps=1", "rubric.rubricor.grpo_queries=2",
                                       "rubric.rubricor.max_new_tokens=48", "rubric.gate.min_pairs=1"])
    res = run_replay(cfg, progress=False)
    report = res["math500_heldout"]["report"].read_text()
    assert "RoRo" in report and "GRPO outcome-only" in report
    roro = [json.loads(x) for x in (tmp_path / "roro_lc0.1" / "metrics.jsonl").read_text().splitlines()]
    grpo = [json.loads(x) for x in (tmp_path / "router_lc0.1" / "metrics.jsonl").read_text().splitlines()]
    assert len(roro) == 3 and all(0.0 <= r["reward/process"] <= 1.0 for r in roro)
    assert "reward/process" not in grpo[0]
    rubric = json.loads((tmp_path / "rubric" / "results.json").read_text())
    assert [g["phase"] for g in rubric["gate"]] == ["judge", "rubricor"]


def test_replay_process_weight_without_scorer_is_an_error(episodes, tmp_path):
    cfg = cfg_for(episodes, tmp_path, ["reward.weights.process=0.5"])
    world = ReplayWorld(episodes)
    learner = RouterLearner(cfg, world.feature_family.dim)
    with pytest.raises(ValueError, match="process scorer"):
        make_collect(learner, world, np.arange(10), cfg)


def test_extra_test_sets_are_checked_before_training(episodes, tmp_path):
    """``replay.extra_test`` sets load before any router trains: a set that shares problems with the training
    split warns (its results are not held out), two entries with one report name are an error naming the
    key (their reports used to overwrite each other), and a bad file stops the run with nothing trained."""
    from pipelines.replay import load_test_sets
    from roro_jax.config import ConfigError
    from roro_jax.worlds.replay import EpisodeFormatError, EpisodeWarning

    rows = [json.loads(x) for x in episodes.read_text().splitlines()]
    world = ReplayWorld(episodes)
    train_idx, test_idx = split_indices(len(world), 0.6, 0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fresh = [dict(r, id=f"new{i}", query=f"another question {i}") for i, r in enumerate(rows[:5])]
    leaked = fresh[:4] + [dict(rows[int(train_idx[0])])]  # one training problem, under its own id
    renamed = fresh[:4] + [dict(rows[int(train_idx[1])], id="renamed")]  # same query text, new id
    for name, rs in (("a/aime.jsonl", fresh), ("b/aime.jsonl", leaked), ("b/renamed.jsonl", renamed)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sets = load_test_sets(cfg_for(episodes, tmp_path, [f"replay.extra_test=[{tmp_path / 'a/aime.jsonl'}]"]),
                              world, train_idx, test_idx)
    assert list(sets) == ["math500_heldout", "aime"] and len(sets["aime"][0]) == 5
    for name, which in (("b/aime.jsonl", rows[int(train_idx[0])]["id"]), ("b/renamed.jsonl", "renamed")):
        with pytest.warns(EpisodeWarning, match=rf"replay.extra_test\[0\].*1 of 5 episodes share a problem id or "
                                                rf"query with the training split \(e.g. '{which}'\)"):
            load_test_sets(cfg_for(episodes, tmp_path, [f"replay.extra_test=[{tmp_path / name}]"]), world,
                           train_idx, test_idx)
    two = cfg_for(episodes, tmp_path, [f"replay.extra_test=[{tmp_path / 'a/aime.jsonl'},{tmp_path / 'b/aime.jsonl'}]"])
    with pytest.raises(ConfigError, match=r"'replay.extra_test\[1\]'.*would be reported as 'aime'"):
        load_test_sets(two, world, train_idx, test_idx)
    (tmp_path / "bad.jsonl").write_text(json.dumps(fresh[0]) + "\n{\"id\": \n")
    bad = cfg_for(episodes, tmp_path / "out", [f"replay.extra_test=[{tmp_path / 'a/aime.jsonl'},{tmp_path / 'bad.jsonl'}]"])
    with pytest.raises(EpisodeFormatError, match=r"bad.jsonl:2: malformed JSON"):
        run_replay(bad, progress=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("router_lc*"))


def test_replay_router_with_kl_to_the_reference(episodes, tmp_path):
    """``grpo.beta > 0`` in the replay world: the KL to the initial router is in the loss and the log."""
    learner0, _ = train_router_replay(cfg_for(episodes, tmp_path / "b0"), progress=False)
    learner, hist = train_router_replay(cfg_for(episodes, tmp_path / "b1", ["grpo.beta=0.5"]), progress=False)
    log = [json.loads(x) for x in (tmp_path / "b1" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["kl_ref"]) for r in log) and log[-1]["kl_ref"] > 0
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(m.params)]) for m in (learner0, learner))
    assert not np.array_equal(a, b)
