"""Routing policies as pure, jittable functions, for the fused routed sampler
(:mod:`roro_jax.engines.fused_routing`), which decides every step on the device.

A :class:`DevicePolicy` is ``(kind, static, params)``: ``kind`` names a decision function in
:data:`DEVICE_POLICY_KINDS`, ``static`` is hashable structure (e.g. the router MLP's graph definition),
``params`` a pytree of arrays (thresholds, weights) that can change without a recompile. A decision
function is

    fn(static, params, obs) -> (actions int32 [B], logp float32 [B])

with ``obs`` a dict of device arrays over B rows:

- ``features`` [B, F] float32, ``confidence`` [B] float32 (the ``logprob`` family's mean chosen-token
  probability, ``features[:, 0]``), ``step_index`` [B] int32;
- ``conf_history`` [B, T] float32: the row's earlier confidences (entries ``< step_index`` are valid);
- ``u_hi``, ``u_lo`` [B]: the row's uniform for this step (the host policy's :func:`row_uniforms` draw,
  a float64 split into two float32s, see below);
- ``row_param`` [B] float32: one per-trajectory number a policy asked for (``CriticalFirst``'s window).

**Same decisions as the host policies.** The host policies compare float64 numbers (a uniform, a
threshold) with float32 ones (features, MLP outputs). A float64 ``c`` is passed as ``hi = float32(c)``,
``lo = float32(c - hi)``; then ``x < c`` for a float32 ``x`` is exactly ``x < hi or (x == hi and lo > 0)``
(:func:`lt64`, :func:`gt64`, :func:`ge64`), so thresholds and random draws decide exactly as on the host.
What is computed in float32 here but in float64 on the host (STEER's mixture posterior, the
critical-first drop test's mean) can differ within ~1e-7 of a decision boundary.

Host policies map to device policies through :func:`to_device_policy`: a policy object may define
``device_policy() -> DevicePolicy`` itself, or an adapter is registered for its class in
:data:`DEVICE_ADAPTERS` (constant, random, confidence threshold, STEER, router MLP, TRIM-Thr,
critical-first, anti-critical). A policy without one returns None (the caller uses the host loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from roro_jax.registry import Registry
from roro_jax.router.uniforms import hash_uniforms

DecisionFn = Callable[[Any, Any, dict], tuple[jax.Array, jax.Array]]

# kind -> decision function fn(static, params, obs) -> (actions [B] int32, logp [B] float32)
DEVICE_POLICY_KINDS: Registry[DecisionFn] = Registry("device policy kind")
# host policy class name -> adapter(policy) -> DevicePolicy
DEVICE_ADAPTERS: Registry[Callable[[Any], "DevicePolicy"]] = Registry("device policy adapter")


@dataclass(frozen=True, eq=False)
class DevicePolicy:
    """A policy the fused sampler can run on the device.

    Attributes:
      policy_id: the host policy's id (names the trajectories).
      kind: a name in :data:`DEVICE_POLICY_KINDS`.
      static: hashable structure the decision function needs (part of the compiled program's key).
      params: pytree of arrays (traced: new values do not recompile).
      salt: the host policy's :func:`~roro_jax.router.uniforms.row_uniforms` salt, or None (no draws).
      row_param: ``(query_id, sample_idx) -> float`` for per-trajectory settings, or None.
    """

    policy_id: str
    kind: str
    static: Any = None
    params: Any = field(default_factory=dict)
    salt: int | None = None
    row_param: Callable[[str, int], float] | None = None

    def decide(self, obs: dict) -> tuple[jax.Array, jax.Array]:
        return DEVICE_POLICY_KINDS.get(self.kind)(self.static, self.params, obs)


# ------------------------------------------------------------------------------------------ float64 compare
def split64(c) -> tuple[np.float32, np.float32]:
    """A float64 as ``(hi, lo)`` float32s with ``hi + lo == c`` to 48 bits and ``|lo| <= ulp(hi) / 2``."""
    c = np.float64(c)
    if not np.isfinite(c):
        return np.float32(c), np.float32(0.0)
    hi = np.float32(c)
    return hi, np.float32(c - np.float64(hi))


def split64_array(c) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(c, np.float64)
    hi = c.astype(np.float32)
    lo = np.where(np.isfinite(c), c - hi.astype(np.float64), 0.0).astype(np.float32)
    return hi, lo


def lt64(x, hi, lo):
    """``x < c`` for float32 ``x`` and ``c = hi + lo`` (exact)."""
    return (x < hi) | ((x == hi) & (lo > 0))


def gt64(x, hi, lo):
    """``x > c`` (exact)."""
    return (x > hi) | ((x == hi) & (lo < 0))


def ge64(x, hi, lo):
    return ~lt64(x, hi, lo)


def _zeros_logp(obs):
    return jnp.zeros(obs["features"].shape[:1], jnp.float32)


def _bernoulli_logp(esc, p):
    p = jnp.clip(p, 1e-12, 1 - 1e-12)
    return jnp.where(esc, jnp.log(p), jnp.log1p(-p)).astype(jnp.float32)


# ------------------------------------------------------------------------------------------ kinds
@DEVICE_POLICY_KINDS.register("constant")
def constant_decision(static, params, obs):
    """SRM-only (``static`` = 0) or LRM-only (1)."""
    n = obs["features"].shape[0]
    return jnp.full((n,), int(static), jnp.int32), jnp.zeros((n,), jnp.float32)


@DEVICE_POLICY_KINDS.register("random")
def random_decision(static, params, obs):
    """Escalate iff ``u < p`` (``u`` the row's host uniform, exact float64 comparison)."""
    u_hi, u_lo = obs["u_hi"], obs["u_lo"]
    p_hi, p_lo = params["p_hi"], params["p_lo"]
    esc = (u_hi < p_hi) | ((u_hi == p_hi) & (u_lo < p_lo))
    logp = jnp.where(esc, jnp.log(p_hi), jnp.log1p(-p_hi)).astype(jnp.float32)  # float32 is enough here
    return esc.astype(jnp.int32), logp


@DEVICE_POLICY_KINDS.register("threshold")
def threshold_decision(static, params, obs):
    """Escalate when ``features[:, col]`` is below the threshold (``static = (col, higher_is_confident)``;
    above it when ``higher_is_confident`` is False)."""
    col, higher = static
    s = obs["features"][:, col]
    esc = lt64(s, params["hi"], params["lo"]) if higher else gt64(s, params["hi"], params["lo"])
    return esc.astype(jnp.int32), _zeros_logp(obs)


@DEVICE_POLICY_KINDS.register("steer")
def steer_decision(static, params, obs):
    """STEER: P(low-mean component | confidence) > gamma under a two-component 1-D Gaussian mixture."""
    x = obs["features"][:, static][:, None].astype(jnp.float32)
    w, mu, sd = params["weights"], params["means"], params["stds"]
    lj = jnp.log(w) - 0.5 * ((x - mu) / sd) ** 2 - jnp.log(sd) - 0.5 * np.log(2 * np.pi)
    post = jnp.exp(lj[:, 0] - jnp.logaddexp(lj[:, 0], lj[:, 1]))
    esc = gt64(post, params["g_hi"], params["g_lo"])
    return esc.astype(jnp.int32), _zeros_logp(obs)


@DEVICE_POLICY_KINDS.register("router_mlp")
def router_decision(static, params, obs):
    """The router MLP (``static`` = its ``nnx`` graph definition): greedy ``p > threshold`` or sampled
    ``u < p``; log-prob of the action under p."""
    from flax import nnx

    from roro_jax.router.mlp import escalate_prob

    graphdef, greedy = static
    p = escalate_prob(nnx.merge(graphdef, params["state"])(obs["features"]))
    if greedy:
        esc = gt64(p, params["t_hi"], params["t_lo"])
    else:
        esc = gt64(p, obs["u_hi"], obs["u_lo"])  # u < p
    return esc.astype(jnp.int32), _bernoulli_logp(esc, p)


@DEVICE_POLICY_KINDS.register("trim_thr")
def trim_thr_decision(static, params, obs):
    """TRIM-Thr: escalate when the ``prm`` family's first feature (the PRM score) is below the threshold."""
    esc = lt64(obs["features"][:, 0], params["hi"], params["lo"])
    return esc.astype(jnp.int32), _zeros_logp(obs)


@DEVICE_POLICY_KINDS.register("critical_first")
def critical_first_decision(static, params, obs):
    """Escalate a window of ``row_param`` steps from the first sharp confidence drop (see
    :class:`~roro_jax.router.exploration.CriticalFirst`); ``static = min_history``."""
    min_history = static
    hist, t = obs["conf_history"], obs["step_index"]
    n, T = hist.shape
    idx = jnp.arange(T)[None, :]
    c = jnp.where(idx == t[:, None], obs["confidence"][:, None], jnp.where(idx < t[:, None], hist, 0.0))
    before = jnp.cumsum(c, axis=1) - c  # sum of c[:i]
    mean_before = before / jnp.maximum(idx, 1)
    drop = mean_before - c
    is_drop = (idx >= max(min_history, 1)) & (idx <= t[:, None]) & ge64(drop, params["d_hi"], params["d_lo"])
    any_drop = jnp.any(is_drop, axis=1)
    d = jnp.argmax(is_drop, axis=1)
    w = obs["row_param"].astype(jnp.int32)
    esc = any_drop & (d <= t) & (t < d + w)
    return esc.astype(jnp.int32), _zeros_logp(obs)


@DEVICE_POLICY_KINDS.register("anti_critical")
def anti_critical_decision(static, params, obs):
    """Escalate confident steps while fewer than ``k`` earlier steps were confident (``static = k``)."""
    hist, t = obs["conf_history"], obs["step_index"]
    idx = jnp.arange(hist.shape[1])[None, :]
    earlier = jnp.sum((idx < t[:, None]) & ge64(hist, params["hi"], params["lo"]), axis=1)
    esc = ge64(obs["confidence"], params["hi"], params["lo"]) & (earlier < static)
    return esc.astype(jnp.int32), _zeros_logp(obs)


# ------------------------------------------------------------------------------------------ adapters
def to_device_policy(policy) -> DevicePolicy | None:
    """The device version of a host policy, or None when it has none (it then runs in the host loop)."""
    own = getattr(policy, "device_policy", None)
    if callable(own):
        return own()
    name = type(policy).__name__
    return DEVICE_ADAPTERS.get(name)(policy) if name in DEVICE_ADAPTERS else None


def _thr(c) -> dict:
    hi, lo = split64(c)
    return {"hi": hi, "lo": lo}


@DEVICE_ADAPTERS.register("ConstantPolicy")
def _constant(p) -> DevicePolicy:
    return DevicePolicy(p.policy_id, "constant", int(p.action))


@DEVICE_ADAPTERS.register("RandomPolicy")
def _random(p) -> DevicePolicy:
    hi, lo = split64(p.p)
    return DevicePolicy(p.policy_id, "random", None, {"p_hi": hi, "p_lo": lo}, salt=0x5EED0000 + p.seed)


def _feature_col(feature) -> int:
    if feature is None:
        return 0  # obs.confidence is the logprob family's first feature (mean chosen-token probability)
    from roro_jax.router.features import LOGPROB_NAMES

    return LOGPROB_NAMES.index(feature)


@DEVICE_ADAPTERS.register("ConfidenceThreshold")
def _confidence(p) -> DevicePolicy:
    return DevicePolicy(p.policy_id, "threshold", (_feature_col(p.feature), bool(p.higher_is_confident)),
                        _thr(p.threshold))


@DEVICE_ADAPTERS.register("SteerPolicy")
def _steer(p) -> DevicePolicy:
    g_hi, g_lo = split64(p.gamma)
    feature = getattr(p._score.__self__, "feature", None)
    params = {"weights": np.asarray(p.gmm.weights, np.float32), "means": np.asarray(p.gmm.means, np.float32),
              "stds": np.asarray(p.gmm.stds, np.float32), "g_hi": g_hi, "g_lo": g_lo}
    return DevicePolicy(p.policy_id, "steer", _feature_col(feature), params)


@DEVICE_ADAPTERS.register("TrimThr")
def _trim(p) -> DevicePolicy:
    return DevicePolicy(p.policy_id, "trim_thr", None, _thr(p.threshold))


@DEVICE_ADAPTERS.register("RouterPolicy")
def _router(p) -> DevicePolicy | None:
    learner = p.learner
    graphdef = getattr(learner, "graphdef", None)
    if graphdef is None:  # a duck-typed learner: only its host escalate_prob is known
        return None
    params = p.params if p.params is not None else learner.params
    t_hi, t_lo = split64(p.threshold)
    return DevicePolicy(p.policy_id, "router_mlp", (graphdef, bool(p.greedy)),
                        {"state": params, "t_hi": t_hi, "t_lo": t_lo}, salt=7)


@DEVICE_ADAPTERS.register("CriticalFirst")
def _critical(p) -> DevicePolicy:
    d_hi, d_lo = split64(p.drop)
    return DevicePolicy(p.policy_id, "critical_first", int(p.min_history), {"d_hi": d_hi, "d_lo": d_lo},
                        row_param=lambda qid, g: float(p.window_length(qid, g)))


@DEVICE_ADAPTERS.register("AntiCritical")
def _anti(p) -> DevicePolicy:
    return DevicePolicy(p.policy_id, "anti_critical", int(p.k), _thr(p.threshold))


def row_uniforms_for(policy: DevicePolicy, row_seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The host policy's per-row uniforms (``hash_uniforms(row_seed, salt)``) as (hi, lo) float32 pairs."""
    if policy.salt is None:
        z = np.zeros(np.shape(row_seeds), np.float32)
        return z, z
    u = hash_uniforms(np.asarray(row_seeds).reshape(-1), policy.salt).reshape(np.shape(row_seeds))
    return split64_array(u)
