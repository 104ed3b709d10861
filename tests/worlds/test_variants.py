"""The toy worlds of the process-reward study: each generates, checks and grades its problems; the
splits are disjoint; the shift where a world has one."""

import pytest

from roro_jax.config import load_config
from roro_jax.tasks import grade, toy
from roro_jax.worlds.variants import WORLDS, get_world


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_world_generates_checks_and_grades_its_problems(name):
    w = get_world(name)
    train = w.problems("train", 60, seed=0)
    val = w.problems("validation", 30, seed=0, skip=60)
    test = w.problems("test", 60, seed=0)
    assert {p.question for p in train}.isdisjoint({p.question for p in val})
    assert {p.question for p in train + val}.isdisjoint({p.question for p in test})
    for task, probs in ((w.train_task, train + val), (w.test_task, test)):
        for p in probs:
            assert task.min_ops <= p.meta["n_ops"] <= task.max_ops
            assert toy.check_solution(p, p.solution).correct and grade(p.solution, p.answer)
            steps = toy.split_steps(p.solution)
            assert len(steps) <= w.max_steps
            assert max(len(s) + 2 for s in steps) <= w.max_step_tokens  # a step and its separator fit
            wrong = p.solution.replace(f"Answer: {p.answer}", f"Answer: {int(p.answer) + 1}")
            assert not grade(wrong, p.answer) and not toy.check_solution(p, wrong).correct


def test_lucky_world_shifts_to_longer_chains_and_control_does_not():
    lucky, control, sparse = get_world("lucky"), get_world("control"), get_world("sparse")
    assert lucky.test_task.min_ops > lucky.train_task.max_ops
    assert control.train_task == control.test_task
    assert sparse.train_task.min_ops >= 8


def test_variant_is_a_config_key_validated_against_the_registry():
    assert load_config(None, ["toy.variant=sparse"]).toy.variant == "sparse"
    with pytest.raises(ValueError, match="toy.variant"):
        load_config(None, ["toy.variant=nope"])


def test_missing_model_folder_is_a_clear_error(monkeypatch, tmp_path):
    import roro_jax.worlds.variants as V

    monkeypatch.setattr(V, "toy_assets_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="toy world 'lucky'"):
        get_world("lucky").model_dir("large")


def test_shipped_world_models_do_what_their_world_needs():
    """The shipped models behave as the worlds are documented (roro_jax/assets/toy/README.md, measured by
    ``python -m pipelines.world_models``): lucky's large model repairs a wrong prefix on its training
    chains (constructed prefixes and the small model's own wrong steps) and trusts it on the test chains; sparse's small model is rarely right on its long chains."""
    from pipelines.world_models import world_table

    lucky = {r["ops"]: r for r in world_table("lucky", [2, 5], n=8, seed=0)}
    assert lucky[2]["repaired"] >= 0.75 and lucky[5]["trusted"] >= 0.75, lucky
    assert lucky[2]["large_acc"] >= 0.75 and lucky[5]["large_acc"] >= 0.75
    assert lucky[2]["small_acc"] > lucky[5]["small_acc"]
    # ... and so on the small model's own wrong steps, which are mostly misread operands (the first lucky
    # model repaired constructed wrong results but none of these: 0 of 28 at 3 operations)
    (own,) = world_table("lucky", [3], n=32, seed=0)
    assert own["own_n"] >= 8 and own["own_repaired"] >= 0.75, own
    assert lucky[5]["own_n"] >= 4 and lucky[5]["own_trusted"] >= 0.75, lucky
    sparse = world_table("sparse", [11], n=8, seed=0)[0]
    assert sparse["small_acc"] <= 0.3 and sparse["large_acc"] >= 0.75, sparse
