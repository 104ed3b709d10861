"""Host-side records: steps, trajectories, preference pairs, rubrics.

These are plain dataclasses (JSON-serialisable through ``to_dict``/``from_dict``); arrays for the jitted
code are produced by :func:`pad_trajectories`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

KEEP = 0
ESCALATE = 1
SMALL = "small"
LARGE = "large"


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


def pad_trajectories(trajs: Sequence[Trajectory], max_steps: int | None = None,
                     n_features: int | None = None) -> dict[str, np.ndarray]:
    """Stack trajectories' routing steps into padded arrays for the jitted update.

    Returns ``features`` [B, T, F] f32, ``actions`` [B, T] i32, ``logp`` [B, T] f32 (the acting policy's
    log-probs), ``mask`` [B, T] f32. Steps beyond ``max_steps`` are an error (never silently dropped).
    """
    if not trajs:
        raise ValueError("pad_trajectories: no trajectories")
    lengths = [len(t.steps) for t in trajs]
    T = max_steps if max_steps is not None else max(max(lengths), 1)
    if max(lengths) > T:
        raise ValueError(f"pad_trajectories: a trajectory has {max(lengths)} steps > max_steps={T}")
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
            feats[i, j] = s.features
            actions[i, j] = s.action
            logp[i, j] = s.action_logp
            mask[i, j] = 1.0
    return {"features": feats, "actions": actions, "logp": logp, "mask": mask}


def read_jsonl(path, cls=None) -> Iterable[Any]:
    """Stream a JSONL file; with ``cls`` given, each row is turned into ``cls.from_dict(row)``."""
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if cls is None:
                yield row
                continue
            try:
                obj = cls.from_dict(row)
            except (TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{lineno}: not a {cls.__name__.lower()} record ({e})") from None
            yield obj
