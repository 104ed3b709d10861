"""Toy worlds for the process-reward study (DESIGN.md §1b): one object per world, one registry.

A process reward can only beat outcome reward where the outcome misleads credit. Each world here is the
toy arithmetic task with a pair of real tiny LMs (``roro_jax/assets/toy``), a training distribution and a
test distribution:

* ``control`` (today's ``easy`` world, the shipped SRM/LRM): 2-3 operations, exact outcome (an answer is
  right iff no wrong step was kept), the same distribution in training and test. The thesis predicts no
  gain here; a large "win" points to a flaw in the comparison.
* ``lucky`` (flawed positives, then a shift): labelled chains; the large model was trained to *repair* a
  wrong prefix on problems of up to 3 operations (it recomputes the running value from the question when
  it writes a step or the ``Answer:`` line, :func:`roro_jax.tasks.toy.corrupted_solution`), on the kinds
  of error the small model makes (mostly a misread operand with right arithmetic), so in training a late
  escalation can turn a wrong kept step into a right answer (measured: 28 of the small model's 31 own
  wrong steps at 2-3 operations). Test problems have 4-6 operations, where the same model trusts the
  written prefix: the repair no longer works. Outcome reward can learn the shortcut ("escalate late");
  a process reward that checks every step should not. (The first version of this world repaired only
  wrong *results* and none of the small model's own errors: benchmarks/RESULTS.md, "Why: the *lucky*
  world makes almost no lucky answers".)
* ``sparse``: labelled chains of 8-12 operations, where the small model alone is rarely right and the
  outcome is a sparse signal; evaluated at low budgets (large λ_c).

``get_world(name)`` returns a :class:`ToyWorld`; :func:`register_world` adds one. The models of a world
are folders under ``roro_jax/assets/toy`` (``small``/``large`` for ``control``; ``chain/small``,
``chain/large``, ``lucky/small`` and ``lucky/large`` for the others), made by the commands in
``roro_jax/assets/toy/README.md`` (``python -m pipelines.pretrain_toy ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from roro_jax.registry import Registry
from roro_jax.tasks import toy
from roro_jax.worlds.toy import toy_assets_dir


@dataclass(frozen=True)
class ToyWorld:
    """A toy world: its models (folders relative to ``roro_jax/assets/toy``) and its problem distributions.

    ``train_task`` gives the training and validation problems (disjoint pools of the train split),
    ``test_task`` the held-out test problems (test split; a shifted distribution where the world has one).
    ``max_steps`` / ``max_step_tokens`` fit the longest solution of either distribution.
    """

    name: str
    small: str
    large: str
    train_task: toy.ToyConfig
    test_task: toy.ToyConfig
    max_steps: int
    max_step_tokens: int
    description: str

    def model_dir(self, which: str) -> Path:
        if which not in ("small", "large"):
            raise ValueError(f"which must be 'small' or 'large', got {which!r}")
        folder = toy_assets_dir() / getattr(self, which)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"toy world {self.name!r}: its {which} model is missing at {folder} (build it "
                                    f"with the command in roro_jax/assets/toy/README.md)")
        return folder

    def problems(self, split: str, n: int, *, seed: int = 0, skip: int = 0) -> list:
        """``n`` distinct problems: ``train`` (training pool), ``validation`` (the train split's problems
        after the first ``skip``, so disjoint from a training pool of that size) or ``test``."""
        if split == "test":
            return toy.generate(n, self.test_task, seed=seed, split="test")
        if split == "train":
            return toy.generate(n, self.train_task, seed=seed, split="train")
        if split == "validation":
            return toy.generate(skip + n, self.train_task, seed=seed, split="train")[skip:]
        raise ValueError(f"split must be train | validation | test, got {split!r}")


_CHAIN = toy.difficulty("chain")

# name -> ToyWorld; ``toy.variant`` picks one
WORLDS: Registry[ToyWorld] = Registry("toy world")


def register_world(world: ToyWorld) -> ToyWorld:
    """Add ``world`` under ``world.name`` (then ``toy.variant=<name>``); returns it."""
    return WORLDS.add(world.name, world)


def get_world(name: str) -> ToyWorld:
    """The toy world ``name`` (:class:`~roro_jax.registry.UnknownNameError`, a ``KeyError``, listing the
    registered worlds otherwise)."""
    return WORLDS.get(name)


register_world(ToyWorld(
    "control", "small", "large", toy.difficulty("easy"), toy.difficulty("easy"), max_steps=8, max_step_tokens=16,
    description="2-3 operations, exact outcome, same distribution in training and test (the shipped pair)"))
register_world(ToyWorld(
    "lucky", "lucky/small", "lucky/large", replace(_CHAIN, min_ops=2, max_ops=3),
    replace(_CHAIN, min_ops=4, max_ops=6), max_steps=10, max_step_tokens=18,
    description="training: 2-3 operations and a large model that repairs a wrong prefix (lucky answers); "
                "test: 4-6 operations, where it does not"))
register_world(ToyWorld(
    "sparse", "chain/small", "chain/large", replace(_CHAIN, min_ops=8, max_ops=12),
    replace(_CHAIN, min_ops=8, max_ops=12), max_steps=16, max_step_tokens=18,
    description="8-12 operations: the small model alone is rarely right, the outcome is sparse"))

__all__ = ["ToyWorld", "WORLDS", "get_world", "register_world"]
