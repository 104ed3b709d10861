"""``roro_jax.rl`` and ``roro_jax.router`` export what users call: every name of ``__all__`` resolves to the
object of its submodule, ``dir()`` lists it, and importing the package stays cheap (PEP 562, imported on
first use)."""

import importlib
import subprocess
import sys

import pytest

from roro_jax.lazy import lazy_exports
from roro_jax.paths import REPO_ROOT

PACKAGES = ("roro_jax.rl", "roro_jax.router")
# what the README, examples/ and DESIGN.md call
USED = {
    "roro_jax.rl": {"make_update", "make_router_update", "make_optimizer", "TrainState", "RouterLearner",
                    "run_training", "policy_loss", "group_advantages", "rloo_advantages", "compute_rewards",
                    "register_reward", "register_advantage", "register_kl", "register_policy_loss",
                    "register_reference", "bradley_terry_loss", "train_on_store", "Checkpointer"},
    "roro_jax.router": {"RouterMLP", "make_router", "register_feature_family", "get_family", "Policy",
                        "RouterPolicy", "StepObservation", "to_device_policy", "srm_only", "lrm_only"},
}


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves_and_is_listed(name):
    pkg = importlib.import_module(name)
    assert USED[name] <= set(pkg.__all__), sorted(USED[name] - set(pkg.__all__))
    assert pkg.__all__ == sorted(set(pkg.__all__))
    listed = dir(pkg)
    for attr in pkg.__all__:
        obj = getattr(pkg, attr)
        assert attr in listed
        home = importlib.import_module(f"{name}.{pkg._EXPORTS[attr]}")
        assert obj is getattr(home, attr), f"{name}.{attr} is not {home.__name__}.{attr}"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        getattr(pkg, "not_a_name")


@pytest.mark.parametrize("name", PACKAGES)
def test_import_is_cheap_and_names_import_their_module_only(name):
    """``import roro_jax.rl`` imports no JAX and no submodule; one name imports its own submodule."""
    pick = {"roro_jax.rl": ("register_reward", "rewards"), "roro_jax.router": ("get_family", "features")}[name]
    code = (f"import sys, {name} as p\n"
            f"print(sorted(m for m in sys.modules if m.startswith('{name}.') or m == 'jax'))\n"
            f"from {name} import {pick[0]}\n"
            f"print(sorted(m for m in sys.modules if m.startswith('{name}.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    before, after = out.stdout.splitlines()
    assert before == "[]"
    assert f"'{name}.{pick[1]}'" in after and f"'{name}.trainer'" not in after and f"'{name}.mlp'" not in after


def test_star_import_and_submodule_attributes():
    ns: dict = {}
    exec("from roro_jax.rl import *", ns)
    assert {"make_update", "register_kl"} <= set(ns) and "lazy_exports" not in ns
    import roro_jax.router as router

    assert router.features.__name__ == "roro_jax.router.features"  # a submodule resolves without an import


def test_a_public_name_may_not_shadow_a_submodule():
    with pytest.raises(ValueError, match=r"\['advantages'\] are also submodule names"):
        lazy_exports("roro_jax.rl", {"advantages": "advantages"}, ("advantages",))
