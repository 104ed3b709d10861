"""Host-side records: steps, trajectories, preference pairs, rubrics.

These are plain dataclasses (JSON-serialisable through ``to_dict``/``from_dict``); arrays for the jitted
code are produced by :func:`pad_trajectories`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

KEEP = 0
ESCALATE = 1
SMALL = "small"
LARGE = "large"


class InputError(ValueError):
    """Malformed input (a file, a record, a config value); the message names the file and line, or the field.

    The ``roro`` command prints it as one ``roro: error: ...`` line and exits with status 2.
    """


class RecordError(InputError):
    """A trajectory record (a dict, e.g. one JSONL line) is malformed; the message names the field."""


@dataclass
class Step:
    """One routing step.

    ``small_*`` describe the step the small model proposed (always generated, counted in cost even when
    discarded); ``text``/``token_ids`` are what entered the trajectory (the small model's step on
    *keep*, the large model's rewrite on *escalate*).
    """

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    model: str = SMALL  # who wrote the kept text: "small" | "large"
    action: int = KEEP  # KEEP | ESCALATE
    action_logp: float = 0.0  # log pi(action | features) under the policy that acted
    features: list[float] = field(default_factory=list)
    small_tokens: int = 0  # tokens the small model generated for this step (kept or discarded)
    large_tokens: int = 0  # tokens the large model generated for this step (0 on keep)
    small_text: str | None = None  # the proposal that was discarded on escalate (None on keep)
    confidence: float | None = None  # scalar confidence summary of the small model's proposal
    prm_score: float | None = None
    finish_reason: str | None = None  # "stop" | "length" | "eos" | ...

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Trajectory:
    """A routed solution of one query by one policy, with its cost and (graded or estimated) outcome."""

    query_id: str
    sample_idx: int
    policy_id: str
    steps: list[Step] = field(default_factory=list)
    answer_text: str = ""
    correct: bool | None = None
    correct_is_estimate: bool = False  # True in the replay world (mixed routes are not observed)
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def traj_id(self) -> str:
        return f"{self.query_id}/{self.policy_id}/{self.sample_idx}"

    @property
    def large_tokens(self) -> int:
        return int(sum(s.large_tokens for s in self.steps))

    @property
    def small_tokens(self) -> int:
        return int(sum(s.small_tokens for s in self.steps))

    @property
    def n_escalations(self) -> int:
        return int(sum(s.action == ESCALATE for s in self.steps))

    @property
    def large_share(self) -> float:
        """Share of the trajectory's kept tokens written by the large model (in [0, 1])."""
        kept = sum(s.n_tokens if s.token_ids else (s.large_tokens if s.action else s.small_tokens)
                   for s in self.steps)
        return float(self.large_tokens / kept) if kept else 0.0

    def flops(self, small_params: float, large_params: float) -> float:
        """2 * N_params per generated token; small-model tokens always count (discarded ones too)."""
        return 2.0 * (small_params * self.small_tokens + large_params * self.large_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        """Build from a record (e.g. a parsed JSON line); a malformed record raises :class:`RecordError`
        naming the field (see :func:`check_trajectory_record`)."""
        check_trajectory_record(d)
        d = dict(d)
        d["steps"] = [Step(**s) for s in d.get("steps", [])]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass
class PreferencePair:
    """(preferred, rejected) trajectories of the same query, with why the pair exists."""

    query_id: str
    preferred: str  # traj_id
    rejected: str  # traj_id
    kind: str  # "outcome" | "cost" | "process"
    margin: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreferencePair":
        return cls(**d)


@dataclass
class Criterion:
    text: str
    weight: float = 1.0


@dataclass
class Rubric:
    query_id: str
    criteria: list[Criterion] = field(default_factory=list)
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rubric":
        d = dict(d)
        d["criteria"] = [Criterion(**c) for c in d.get("criteria", [])]
        return cls(**d)


# ------------------------------------------------------------------------------ record validation
# Field kinds of the JSON records of Step and Trajectory ("?": null allowed). "num" is a finite number: the
# numbers that reach the jitted update (features, action_logp) and the confidences that rank steps must not
# be NaN/inf. Strings must be valid Unicode (a lone surrogate such as "\ud800" cannot be UTF-8 encoded);
# every other code point (NUL, RTL marks, emoji, combining characters) is data and round-trips unchanged.
_STEP_KINDS = {"index": "count", "text": "str", "token_ids": "counts", "model": "str", "action": "action",
               "action_logp": "num", "features": "nums", "small_tokens": "count", "large_tokens": "count",
               "small_text": "str?", "confidence": "num?", "prm_score": "num?", "finish_reason": "str?"}
_TRAJ_KINDS = {"query_id": "str", "sample_idx": "count", "policy_id": "str", "steps": "steps",
               "answer_text": "str", "correct": "bool?", "correct_is_estimate": "bool", "seed": "int",
               "meta": "dict"}
_NAMES = {"int": "an integer", "count": "a non-negative integer", "counts": "a list of non-negative integers", "str": "a string", "bool": "true/false", "num": "a finite number",
          "ints": "a list of integers", "nums": "a list of finite numbers", "dict": "a JSON object",
          "steps": "a list of step objects", "action": "0 (keep) or 1 (escalate)"}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


def _check_str(v: str, name: str) -> None:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(f"field '{name}': lone surrogate U+{ord(v[e.start]):04X} at character {e.start} "
                          "is not valid Unicode") from None


_CHECKS = {"int": _is_int, "count": lambda v: _is_int(v) and v >= 0, "num": _finite, "str": lambda v: isinstance(v, str),
           "bool": lambda v: isinstance(v, bool), "dict": lambda v: isinstance(v, dict),
           "action": lambda v: _is_int(v) and v in (KEEP, ESCALATE)}


def _check_value(v, kind: str, name: str) -> None:
    if v is None and kind.endswith("?"):
        return
    k = kind.rstrip("?")
    if k in ("ints", "nums", "counts"):  # a list of int / num / count
        item_ok = _CHECKS[k[:-1]]
        if isinstance(v, list) and not all(map(item_ok, v)):
            i = next(i for i, x in enumerate(v) if not item_ok(x))
            raise RecordError(f"field '{name}[{i}]': expected {_NAMES[k[:-1]]}, got {v[i]!r:.80}")
        ok = isinstance(v, list)
    else:
        ok = _CHECKS[k](v)
    if not ok:
        raise RecordError(f"field '{name}': expected {_NAMES[k]}, got {v!r:.80}")
    if k == "str":
        _check_str(v, name)


def _check_fields(d, kinds: dict[str, str], cls, where: str) -> None:
    """``where``: "" for the trajectory, "steps[i]" for a step."""
    head = f"{where}: " if where else ""
    if not isinstance(d, dict):
        raise RecordError(f"{head}expected a JSON object, got {type(d).__name__}")
    unknown = [k for k in d if k not in kinds]
    if unknown:
        raise RecordError(f"{head}unknown field {unknown[0]!r}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise RecordError(f"{head}missing required field {missing[0]!r}")
    prefix = f"{where}." if where else ""
    for k, v in d.items():
        if kinds[k] == "steps":
            if not isinstance(v, list):
                raise RecordError(f"field 'steps': expected a list of step objects, got {v!r:.80}")
            for i, st in enumerate(v):
                _check_fields(st, _STEP_KINDS, Step, f"steps[{i}]")
        else:
            _check_value(v, kinds[k], prefix + k)


def check_trajectory_record(d) -> None:
    """Raise :class:`RecordError` naming the field unless ``d`` is a valid :class:`Trajectory` record.

    A record is a JSON object with the dataclass fields: ``query_id``/``sample_idx``/``policy_id``
    required; no unknown fields; integers are integers (not strings, floats or booleans), and the counts and
    indices (``sample_idx``, a step's ``index``, ``small_tokens``, ``large_tokens``, ``token_ids``) are
    non-negative, so costs cannot go wrong silently; ``action`` is 0
    or 1; ``features``, ``action_logp``, ``confidence`` and ``prm_score`` are finite numbers (JSON's
    ``NaN``/``Infinity`` are rejected); strings are valid Unicode. Zero steps, empty step text and long
    texts are valid.
    """
    _check_fields(d, _TRAJ_KINDS, Trajectory, "")


def pad_trajectories(trajs: Sequence[Trajectory], max_steps: int | None = None,
                     n_features: int | None = None) -> dict[str, np.ndarray]:
    """Stack trajectories' routing steps into padded arrays for the jitted update.

    Returns ``features`` [B, T, F] f32, ``actions`` [B, T] i32, ``logp`` [B, T] f32 (the acting policy's
    log-probs), ``mask`` [B, T] f32. Steps beyond ``max_steps`` are an error (never silently dropped), and
    so are non-finite features or log-probs and actions other than 0/1 (they would reach the jitted update).
    A trajectory with zero steps is a row with an all-zero mask (it contributes nothing to the loss).
    """
    if not trajs:
        raise ValueError("pad_trajectories: no trajectories")
    lengths = [len(t.steps) for t in trajs]
    T = max_steps if max_steps is not None else max(max(lengths), 1)
    if max(lengths) > T:
        i = lengths.index(max(lengths))
        raise ValueError(f"pad_trajectories: trajectory {trajs[i].traj_id} has {lengths[i]} steps > max_steps={T}")
    if n_features is None:
        n_features = next((len(s.features) for t in trajs for s in t.steps), 0)
    B = len(trajs)
    feats = np.zeros((B, T, n_features), np.float32)
    actions = np.zeros((B, T), np.int32)
    logp = np.zeros((B, T), np.float32)
    mask = np.zeros((B, T), np.float32)
    for i, t in enumerate(trajs):
        for j, s in enumerate(t.steps):
            if len(s.features) != n_features:
                raise ValueError(f"trajectory {t.traj_id} step {j}: {len(s.features)} features, "
                                 f"expected {n_features}")
            if s.action not in (KEEP, ESCALATE):
                raise ValueError(f"trajectory {t.traj_id} step {j}: action {s.action!r} is not 0 or 1")
            feats[i, j] = s.features
            actions[i, j] = s.action
            logp[i, j] = s.action_logp
            mask[i, j] = 1.0
    for name, x in (("features", feats), ("action_logp", logp)):
        bad = ~np.isfinite(x)
        if bad.any():
            i, j, *f = np.argwhere(bad)[0]
            what = f"features[{f[0]}]" if f else name
            raise ValueError(f"trajectory {trajs[i].traj_id} step {j}: {what} is {x[(i, j, *f)]} (not finite)")
    return {"features": feats, "actions": actions, "logp": logp, "mask": mask}
