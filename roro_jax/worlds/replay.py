"""The replay world: stepwise routing over recorded small/large-model episodes.

An *episode* (one JSONL row of ``../shared/data/episodes/*.jsonl``, read by path, never copied into
the project) holds, for one problem, the small model's solution split into steps and the large
model's solution split into steps, each step with its PRM score and token count, and whether each
model's final answer was right (fields in :data:`EPISODE_FIELDS`).

**Routing.** At step t the router either keeps the small model's step t or substitutes the large
model's step t. The two solutions may have different numbers of steps (``S_small``, ``S_large``):

- where both models have a step t, the router's action decides;
- where only one has (the other's solution is already over), that one's step is used whatever the
  action: escalation is forced where only the large model has a step, keep where only the small
  model has one (no large tokens are spent there);
- a route ends with the first step that is the *last* step of the model that wrote it (a solution's
  last step holds its final answer). So all-keep replays the small solution exactly, all-escalate
  the large one exactly, and every route has at most ``max(S_small, S_large)`` steps.

Steps at which the router really chooses are ``decision_mask``; only their actions matter.

**Cost.** Large-model tokens of the escalated steps. Small-model tokens are counted at every step of
the route at which the small model has a step (its proposal is generated before the router decides,
so discarded proposals count too), as DESIGN.md §1 prescribes.

**Features.** The ``prm`` family (TRIM-Agg, :func:`roro_jax.router.features.prm_features`) per step:
the current score and step length are those of the small model's proposal for step t; the min and
product of earlier scores run over the steps actually written before t (small or large). The PRM
scored each model's steps in that model's own context; reusing those scores in a mixed route is an
approximation, stated here.

**Outcome (an estimate).** The correctness of a mixed route was never observed. It is estimated by
a configurable rule (:data:`OUTCOME_RULES`; pure routes always get their recorded outcome):

- ``last_writer`` (default): the recorded correctness of the model that wrote the route's last step,
  whose final answer the route ends with.
- ``majority``: the recorded correctness of the model that wrote more of the route's steps (ties:
  the last writer).
- ``prm_gate``: the last writer's correctness, and only if every written step's PRM score is at least
  ``prm_threshold`` (default 0.5).
- ``both`` / ``either``: correct only if both models' solutions were correct / if either was (a
  pessimistic and an optimistic bound).

Every :class:`~roro_jax.types.Trajectory` this world returns has ``correct_is_estimate=True`` and the
rule's name in ``meta["outcome_rule"]``; every batch result carries ``is_estimate=True`` and the rule.
The recorded ``mixed_correct`` field of the files is kept in ``Episode.meta`` but never used.

The batch functions (:meth:`ReplayWorld.route`, :meth:`~ReplayWorld.features`,
:meth:`~ReplayWorld.evaluate`) are vectorised NumPy over action arrays of any leading shape
``[..., T]`` (for example ``[G, E, T]``: G samples for each of E episodes), for router training loops
that evaluate many action matrices.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from roro_jax.jsonio import iter_jsonl
from roro_jax.paths import shared_data_dir
from roro_jax.registry import Registry
from roro_jax.types import ESCALATE, KEEP, LARGE, SMALL, InputError, Step, Trajectory

DEFAULT_EPISODES = "math500"
EPISODE_FIELDS = (
    "id", "query", "answer",
    "srm_steps", "srm_prm_scores", "srm_token_counts", "srm_correct",
    "lrm_steps", "lrm_prm_scores", "lrm_token_counts", "lrm_correct",
)
OPTIONAL_FIELDS = ("dataset", "srm_answer", "lrm_answer", "srm_total_tokens", "lrm_total_tokens",
                   "mixed_correct")


class EpisodeFormatError(InputError):
    """A malformed episode file or row; the message names the file, line and field (an
    :class:`~roro_jax.types.InputError`: the ``roro`` command prints it as one ``roro: error:`` line)."""


class EpisodeWarning(UserWarning):
    """Episode data that loads but may not mean what the user thinks (the message says what and where)."""


@dataclass(frozen=True)
class Episode:
    """One recorded problem: both models' step lists, per-step PRM scores and token counts."""

    id: str
    dataset: str
    query: str
    answer: str
    small_steps: tuple[str, ...]
    small_prm: tuple[float, ...]
    small_tokens: tuple[int, ...]
    small_correct: bool
    small_answer: str
    large_steps: tuple[str, ...]
    large_prm: tuple[float, ...]
    large_tokens: tuple[int, ...]
    large_correct: bool
    large_answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_small(self) -> int:
        return len(self.small_steps)

    @property
    def n_large(self) -> int:
        return len(self.large_steps)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _check_list(row, key, kind, where):
    v = row[key]
    if not isinstance(v, list):
        raise EpisodeFormatError(f"{where}: field {key!r} must be a list, got {type(v).__name__}")
    if not v:
        raise EpisodeFormatError(f"{where}: field {key!r} is empty (an episode needs at least one step)")
    for i, x in enumerate(v):
        if kind == "str" and not isinstance(x, str):
            raise EpisodeFormatError(f"{where}: {key}[{i}] must be a string")
        if kind == "prm":
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
                    or not 0.0 <= x <= 1.0:
                raise EpisodeFormatError(f"{where}: {key}[{i}] = {x!r} is not a score in [0, 1]")
        if kind == "count":
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise EpisodeFormatError(f"{where}: {key}[{i}] = {x!r} is not a token count (int >= 0)")
    return v


def parse_episode(row: Any, where: str) -> Episode:
    """Validate one decoded row (``where`` = ``"file:line"`` for messages) into an Episode."""
    if not isinstance(row, dict):
        raise EpisodeFormatError(f"{where}: row is a JSON {type(row).__name__}, expected an object")
    missing = [k for k in EPISODE_FIELDS if k not in row]
    if missing:
        raise EpisodeFormatError(f"{where}: missing field(s) {missing}")
    for k in ("id", "query", "answer"):
        if not isinstance(row[k], (str, int)) or isinstance(row[k], bool) or str(row[k]) == "":
            raise EpisodeFormatError(f"{where}: field {k!r} must be a non-empty string")
    out = {}
    for p in ("srm", "lrm"):
        steps = _check_list(row, f"{p}_steps", "str", where)
        prm = _check_list(row, f"{p}_prm_scores", "prm", where)
        tok = _check_list(row, f"{p}_token_counts", "count", where)
        if not len(steps) == len(prm) == len(tok):
            raise EpisodeFormatError(f"{where}: {p}_steps, {p}_prm_scores and {p}_token_counts have "
                                     f"lengths {len(steps)}, {len(prm)}, {len(tok)}; they must agree")
        if not isinstance(row[f"{p}_correct"], bool):
            raise EpisodeFormatError(f"{where}: field {p}_correct must be true/false, got "
                                     f"{row[f'{p}_correct']!r}")
        out[p] = (tuple(steps), tuple(float(x) for x in prm), tuple(int(x) for x in tok),
                  bool(row[f"{p}_correct"]), str(row.get(f"{p}_answer", "") or ""))
    meta = {}
    for k in ("srm_total_tokens", "lrm_total_tokens"):
        v = row.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise EpisodeFormatError(f"{where}: field {k} = {v!r} is not a token count (int >= 0)")
        meta[k] = v
    if "mixed_correct" in row:
        meta["recorded_mixed_correct"] = row["mixed_correct"]  # their estimate: kept, never used
    meta["where"] = where
    return Episode(str(row["id"]), str(row.get("dataset", "") or ""), str(row["query"]),
                   str(row["answer"]), *out["srm"], *out["lrm"], meta=meta)


def resolve_episodes(path_or_name: str | Path | None = None) -> list[Path]:
    """Episode files for a path (file or folder of ``*.jsonl``) or a name (``"math500"`` matches
    ``<shared data>/episodes/math500_*.jsonl``; a file name such as ``"aime2025_x.jsonl"`` is looked up
    there too). None means :data:`DEFAULT_EPISODES`. Raises ``FileNotFoundError`` naming what is missing."""
    target = DEFAULT_EPISODES if path_or_name is None else path_or_name
    p = Path(target).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"no *.jsonl episode files in {p}")
        return files
    folder = shared_data_dir() / "episodes"
    if p.is_absolute() or len(p.parts) > 1:  # a path, not a name: nothing to look up in the shared folder
        raise FileNotFoundError(f"episode file or folder {str(target)!r} does not exist")
    if not folder.is_dir():
        raise FileNotFoundError(f"no episode file {str(target)!r}, and the shared episodes folder {folder} "
                                f"does not exist (set RORO_SHARED_DATA or pass a path)")
    name = p.name
    files = sorted(folder.glob(f"{name}_*.jsonl")) or sorted(folder.glob(f"{name}.jsonl")) \
        or sorted(f for f in folder.glob("*.jsonl") if f.name == name)
    if not files:
        raise FileNotFoundError(f"no episode file matching {str(target)!r} in {folder}; there are: "
                                f"{[f.name for f in sorted(folder.glob('*.jsonl'))]}")
    return files


DUPLICATE_POLICIES = ("suffix", "first", "error")


def load_episodes(path_or_name: str | Path | None = None, *, duplicate_ids: str = "suffix") -> list[Episode]:
    """Read and validate episodes (see :func:`resolve_episodes`), in file order.

    Recorded files can hold the same problem id twice (the shared MATH-500 file has three ids
    recorded twice, with different solutions; its README counts all 169 rows). ``duplicate_ids``:
    ``"suffix"`` keeps every row and renames the k-th repeat ``"<id>#k"`` (k = 2, 3, ...; the
    recorded id stays in ``meta["recorded_id"]``), ``"first"`` keeps the first row of each id,
    ``"error"`` rejects the file.

    Files are UTF-8 (a leading byte-order mark is accepted). Raises :class:`EpisodeFormatError` naming
    ``file:line`` (and the field) for a malformed row, ``FileNotFoundError`` for a missing file. Warns
    (:class:`EpisodeWarning`, once per file) when the per-step token counts of episodes miss their recorded
    ``srm_total_tokens``/``lrm_total_tokens`` by more than one token per step (a step-split re-tokenisation
    moves a token or two; more means steps are missing, e.g. solutions cut at 30 steps).
    """
    if duplicate_ids not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicate_ids must be one of {DUPLICATE_POLICIES}, got {duplicate_ids!r}")
    episodes: list[Episode] = []
    seen: dict[str, list[str]] = {}
    for path in resolve_episodes(path_or_name):
        off_totals: list[str] = []
        n_file = 0
        for lineno, row in iter_jsonl(path, error=EpisodeFormatError):  # a byte-order mark is skipped
            where = f"{path}:{lineno}"
            ep = parse_episode(row, where)
            n_file += 1
            off = _totals_off(ep)
            if off:
                off_totals.append(f"line {lineno} (id {ep.id!r}): {off}")
            prev = seen.setdefault(ep.id, [])
            prev.append(where)
            if len(prev) > 1:
                if duplicate_ids == "error":
                    raise EpisodeFormatError(f"{where}: duplicate episode id {ep.id!r} (first at {prev[0]})")
                if duplicate_ids == "first":
                    continue
                ep = dataclasses.replace(ep, id=f"{ep.id}#{len(prev)}",
                                         meta={**ep.meta, "recorded_id": ep.id, "duplicate_of": prev[0]})
            episodes.append(ep)
        if off_totals:
            warnings.warn(f"{path}: in {len(off_totals)} of {n_file} episodes the per-step token counts do not add "
                          f"up to the recorded total (off by more than one token per step), e.g. "
                          f"{off_totals[0]}; costs use the per-step counts", EpisodeWarning, stacklevel=2)
    if not episodes:
        raise EpisodeFormatError(f"no episodes in {path_or_name}")
    return episodes


def _totals_off(ep: Episode) -> str:
    """How ``ep``'s per-step token counts miss its recorded totals by more than one token per step ("" if not)."""
    out = []
    for p, tokens in (("srm", ep.small_tokens), ("lrm", ep.large_tokens)):
        total = ep.meta.get(f"{p}_total_tokens")
        if total is not None and abs(sum(tokens) - total) > len(tokens):
            out.append(f"sum of {p}_token_counts {sum(tokens)} vs {p}_total_tokens {total}")
    return "; ".join(out)


# ----------------------------------------------------------------------------------------------
# Outcome estimation rules
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteContext:
    """What an outcome rule may look at (arrays over the batch shape ``[...]`` or ``[..., T]``)."""

    escalated: np.ndarray  # [..., T] bool, the effective actions (True = large model's step)
    in_route: np.ndarray  # [..., T] bool
    last_writer_large: np.ndarray  # [...] bool
    n_steps: np.ndarray  # [...] int
    n_large_steps: np.ndarray  # [...] int
    small_correct: np.ndarray  # [...] bool, recorded
    large_correct: np.ndarray  # [...] bool, recorded
    written_prm: np.ndarray  # [..., T] PRM score of each written step (0 outside the route)

    @property
    def pure(self) -> np.ndarray:
        """Routes written by one model only: their outcome was observed."""
        return (self.n_large_steps == 0) | (self.n_large_steps == self.n_steps)

    @property
    def recorded(self) -> np.ndarray:
        """Recorded outcome of the one model of a pure route (the last writer's otherwise)."""
        return np.where(self.last_writer_large, self.large_correct, self.small_correct)


OutcomeRule = Callable[..., np.ndarray]
# name -> ``fn(ctx: RouteContext, **params) -> bool[...]``; ``replay.outcome_rule`` picks one
OUTCOME_RULES: Registry[OutcomeRule] = Registry("outcome rule")


def register_outcome_rule(name: str):
    """Decorator: ``@register_outcome_rule("mine") def f(ctx: RouteContext, **params) -> bool[...]``."""
    return OUTCOME_RULES.register(name)


@register_outcome_rule("last_writer")
def _last_writer(ctx: RouteContext) -> np.ndarray:
    return ctx.recorded


@register_outcome_rule("majority")
def _majority(ctx: RouteContext) -> np.ndarray:
    twice = 2 * ctx.n_large_steps
    return np.where(twice > ctx.n_steps, ctx.large_correct,
                    np.where(twice < ctx.n_steps, ctx.small_correct, ctx.recorded))


@register_outcome_rule("prm_gate")
def _prm_gate(ctx: RouteContext, prm_threshold: float = 0.5) -> np.ndarray:
    lowest = np.min(np.where(ctx.in_route, ctx.written_prm, np.inf), axis=-1)
    return np.where(ctx.pure, ctx.recorded, ctx.recorded & (lowest >= prm_threshold))


@register_outcome_rule("both")
def _both(ctx: RouteContext) -> np.ndarray:
    return np.where(ctx.pure, ctx.recorded, ctx.small_correct & ctx.large_correct)


@register_outcome_rule("either")
def _either(ctx: RouteContext) -> np.ndarray:
    return np.where(ctx.pure, ctx.recorded, ctx.small_correct | ctx.large_correct)


# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteBatch:
    """Routes of a batch of action arrays ``[..., T]`` (see the module docstring for the semantics)."""

    escalated: np.ndarray  # [..., T] bool: effective actions (forced ones applied), within the route
    in_route: np.ndarray  # [..., T] bool: step t is part of the route
    decision_mask: np.ndarray  # [..., T] bool: the router's action at t mattered
    n_steps: np.ndarray  # [...] int
    n_escalations: np.ndarray  # [...] int: escalated steps of the route (forced ones included)
    large_tokens: np.ndarray  # [...] int
    small_tokens: np.ndarray  # [...] int (discarded proposals included)
    kept_tokens: np.ndarray  # [...] int: tokens of the written steps
    large_share: np.ndarray  # [...] float: large_tokens / kept_tokens (Trajectory.large_share)
    large_frac: np.ndarray  # [...] float: large_tokens / the large model's whole solution's tokens
    last_writer_large: np.ndarray  # [...] bool
    correct: np.ndarray  # [...] bool: ESTIMATED by ``outcome_rule``
    observed: np.ndarray  # [...] bool: pure route, so ``correct`` is the recorded outcome
    outcome_rule: str
    is_estimate: bool = True

    def reward_batch(self) -> dict[str, np.ndarray]:
        """The reward batch of these routes (the fields of :mod:`roro_jax.worlds.reward_fields`, without
        ``process``): ``correct``, ``large_share``, ``escalation_rate``, ``small_tokens``, ``large_tokens``."""
        return {"correct": np.asarray(self.correct, np.float32),
                "large_share": np.asarray(self.large_share, np.float32),
                "escalation_rate": (self.n_escalations / np.maximum(self.n_steps, 1)).astype(np.float32),
                "small_tokens": np.asarray(self.small_tokens, np.float32),
                "large_tokens": np.asarray(self.large_tokens, np.float32)}


class ReplayWorld:
    """Routing over recorded episodes; outcome of mixed routes estimated by ``outcome_rule``.

    Args:
      episodes: a list of :class:`Episode`, or anything :func:`load_episodes` accepts (None: the
        default MATH-500 episodes in the shared data folder; duplicate ids suffixed).
      outcome_rule: a name in :data:`OUTCOME_RULES`.
      duplicate_ids: how :func:`load_episodes` treats repeated ids when reading files.
      feature_family: a feature family with the ``prm`` family's signature ``fn(prm_scores,
        step_tokens, mask) -> [..., S, F]``.
      **rule_params: parameters of the rule (``prm_threshold`` for ``prm_gate``).
    """

    def __init__(self, episodes: Sequence[Episode] | str | Path | None = None, *,
                 outcome_rule: str = "last_writer", feature_family: str = "prm",
                 duplicate_ids: str = "suffix", **rule_params):
        if episodes is None or isinstance(episodes, (str, Path)):
            episodes = load_episodes(episodes, duplicate_ids=duplicate_ids)
        self.episodes: list[Episode] = list(episodes)
        if not self.episodes:
            raise ValueError("ReplayWorld: no episodes")
        OUTCOME_RULES.get(outcome_rule)  # UnknownNameError listing the rules
        self.outcome_rule = outcome_rule
        self.rule_params = dict(rule_params)
        OUTCOME_RULES[outcome_rule](self._probe_context(), **self.rule_params)  # bad params fail now
        from roro_jax.router.features import get_family

        self.feature_family = get_family(feature_family)
        import jax

        self._feature_fn = jax.jit(self.feature_family.fn)  # one compile per batch shape
        E = len(self.episodes)
        self.n_small = np.array([e.n_small for e in self.episodes], np.int64)
        self.n_large = np.array([e.n_large for e in self.episodes], np.int64)
        self.max_steps = int(max(self.n_small.max(), self.n_large.max()))
        T = self.max_steps
        self.small_tok = np.zeros((E, T), np.int64)
        self.large_tok = np.zeros((E, T), np.int64)
        self.small_prm = np.zeros((E, T), np.float32)
        self.large_prm = np.zeros((E, T), np.float32)
        for i, e in enumerate(self.episodes):
            self.small_tok[i, :e.n_small] = e.small_tokens
            self.large_tok[i, :e.n_large] = e.large_tokens
            self.small_prm[i, :e.n_small] = e.small_prm
            self.large_prm[i, :e.n_large] = e.large_prm
        self.small_correct = np.array([e.small_correct for e in self.episodes], bool)
        self.large_correct = np.array([e.large_correct for e in self.episodes], bool)
        self.large_total = self.large_tok.sum(-1)

    def _probe_context(self) -> RouteContext:
        z = np.zeros((1, 1), bool)
        return RouteContext(z, ~z, z[:, 0], np.ones(1, int), np.zeros(1, int), z[:, 0], z[:, 0],
                            np.ones((1, 1), np.float32))

    # -- shapes and indices ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.episodes]

    def problems(self):
        """The episodes' queries as :class:`roro_jax.tasks.Problem` (for rubrics and reports)."""
        from roro_jax.tasks.problem import Problem

        return [Problem(e.id, e.query, e.answer, e.dataset or "replay") for e in self.episodes]

    def _index(self, actions: np.ndarray, episode_idx) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(actions)
        if a.ndim < 2:
            raise ValueError(f"actions must have shape [..., B, T] (got {a.shape}); one route per row")
        if a.dtype == bool:
            a = a.astype(np.int8)
        if not np.issubdtype(a.dtype, np.integer):
            if not np.all(np.isin(a, (0, 1))):
                raise ValueError("actions must be 0 (keep) or 1 (escalate)")
            a = a.astype(np.int8)
        elif a.size and (a.min() < KEEP or a.max() > ESCALATE):
            raise ValueError(f"actions must be {KEEP} (keep) or {ESCALATE} (escalate), found "
                             f"{sorted(set(np.unique(a).tolist()) - {0, 1})}")
        lead = a.shape[:-1]
        if episode_idx is None:
            if lead[-1] != len(self):
                raise ValueError(f"actions {a.shape}: without episode_idx the second-to-last axis must "
                                 f"be the {len(self)} episodes")
            idx = np.broadcast_to(np.arange(len(self)), lead)
        else:
            idx = np.broadcast_to(np.asarray(episode_idx, np.int64), lead)
            if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
                raise IndexError(f"episode_idx out of range [0, {len(self)})")
        T = self.max_steps
        need = int(np.maximum(self.n_small[idx], self.n_large[idx]).max()) if idx.size else 0
        if a.shape[-1] < need:
            raise ValueError(f"actions have {a.shape[-1]} steps but the selected episodes need {need}")
        if a.shape[-1] < T:
            a = np.concatenate([a, np.zeros(lead + (T - a.shape[-1],), a.dtype)], -1)
        return a[..., :T], idx

    # -- routing -----------------------------------------------------------------------------

    def _route_arrays(self, a: np.ndarray, idx: np.ndarray):
        t = np.arange(self.max_steps)
        ns, nl = self.n_small[idx][..., None], self.n_large[idx][..., None]
        has_s, has_l = t < ns, t < nl
        esc = np.where(has_s & has_l, a.astype(bool), has_l & ~has_s)
        last = np.where(esc, t == nl - 1, t == ns - 1)
        end = np.argmax(last, axis=-1)  # the first step that ends its writer's solution
        in_route = t <= end[..., None]
        return esc & in_route, in_route, in_route & has_s & has_l, has_s, end

    def route(self, actions, episode_idx=None) -> RouteBatch:
        """Routes, costs and ESTIMATED outcomes of action arrays ``[..., T]`` (1 = escalate).

        ``episode_idx`` (broadcast to ``actions.shape[:-1]``) says which episode each row routes;
        without it the second-to-last axis must enumerate all episodes in order. ``T`` must cover the
        selected episodes' steps; columns past ``max_steps`` are ignored.
        """
        a, idx = self._index(actions, episode_idx)
        esc, in_route, decision, has_s, end = self._route_arrays(a, idx)
        st, lt = self.small_tok[idx], self.large_tok[idx]
        large_tokens = np.sum(lt * esc, -1)
        small_tokens = np.sum(st * (has_s & in_route), -1)
        kept = np.sum(np.where(esc, lt, st) * in_route, -1)
        n_steps = end + 1
        n_large = np.sum(esc, -1)
        last_large = np.take_along_axis(esc, end[..., None], -1)[..., 0]
        written_prm = np.where(esc, self.large_prm[idx], self.small_prm[idx]) * in_route
        ctx = RouteContext(esc, in_route, last_large, n_steps, n_large, self.small_correct[idx],
                           self.large_correct[idx], written_prm)
        correct = np.asarray(OUTCOME_RULES[self.outcome_rule](ctx, **self.rule_params), bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(kept > 0, large_tokens / np.maximum(kept, 1), 0.0)
            frac = np.where(self.large_total[idx] > 0, large_tokens / np.maximum(self.large_total[idx], 1), 0.0)
        return RouteBatch(esc, in_route, decision, n_steps, n_large, large_tokens, small_tokens, kept,
                          share, frac, last_large, correct, ctx.pure, self.outcome_rule)

    def features(self, actions, episode_idx=None) -> np.ndarray:
        """Router features ``[..., T, F]`` at every step of the routes of ``actions``.

        The feature at step t depends only on the actions before t (so a sequential policy can be
        rolled out with :meth:`rollout`). Steps that are not decisions (forced, or past the route's
        end) are zero.
        """
        a, idx = self._index(actions, episode_idx)
        esc, in_route, decision, _, _ = self._route_arrays(a, idx)
        written = np.where(esc, self.large_prm[idx], self.small_prm[idx])
        feats = np.array(self._feature_fn(written, self.small_tok[idx].astype(np.float32),
                                           decision.astype(np.float32)), np.float32)
        # The current step is the small model's proposal: its PRM score (the family used the written one).
        feats[..., 0] = self.small_prm[idx] * decision
        return feats

    def rollout(self, policy: Callable[[np.ndarray, int], Any], episode_idx=None, *,
                shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, RouteBatch]:
        """Run a sequential policy: ``policy(features_t [..., F], t) -> actions_t [...]`` (0/1).

        Rows are ``episode_idx`` (default: every episode once); ``shape`` adds leading sample axes
        (e.g. ``shape=(G,)`` for G samples per episode). Returns ``(actions [..., T], features
        [..., T, F], route)``; the policy's actions at non-decision steps are kept in ``actions``
        but do not affect the route.
        """
        idx = np.arange(len(self)) if episode_idx is None else np.asarray(episode_idx, np.int64)
        if shape:
            idx = np.broadcast_to(idx, tuple(shape) + idx.shape)
        T = self.max_steps
        actions = np.zeros(idx.shape + (T,), np.int8)
        for t in range(T):
            f_t = self.features(actions, idx)[..., t, :]
            a_t = np.asarray(policy(f_t, t))
            actions[..., t] = np.broadcast_to(a_t, idx.shape).astype(np.int8)
        return actions, self.features(actions, idx), self.route(actions, idx)

    def evaluate(self, actions, episode_idx=None) -> dict[str, Any]:
        """Mean ESTIMATED accuracy and costs of a batch of routes (means over all leading axes)."""
        r = self.route(actions, episode_idx)
        dec = r.decision_mask.sum()
        return {
            "accuracy": float(r.correct.mean()),
            "accuracy_is_estimate": True,
            "outcome_rule": self.outcome_rule,
            "observed_share": float(r.observed.mean()),
            "large_tokens": float(r.large_tokens.mean()),
            "small_tokens": float(r.small_tokens.mean()),
            "large_share": float(r.large_share.mean()),
            "large_frac": float(r.large_frac.mean()),
            "escalation_rate": float((r.escalated & r.decision_mask).sum() / dec) if dec else 0.0,
            "n_routes": int(r.correct.size),
        }

    # -- baseline action arrays -------------------------------------------------------------

    def all_keep(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.zeros(tuple(shape) + (len(self), self.max_steps), np.int8)

    def all_escalate(self, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.ones(tuple(shape) + (len(self), self.max_steps), np.int8)

    def threshold_actions(self, thresholds) -> np.ndarray:
        """TRIM-Thr: escalate where the small proposal's PRM score is below the threshold.

        The proposal's score does not depend on earlier actions, so the whole sweep is one array
        ``[K, E, T]`` for K thresholds.
        """
        th = np.asarray(thresholds, np.float32).reshape(-1, 1, 1)
        return (self.small_prm[None] < th).astype(np.int8)

    # -- records -----------------------------------------------------------------------------

    def trajectories(self, actions, episode_idx=None, *, policy_id: str = "replay",
                     sample_idx: int | Sequence[int] = 0, action_logp=None,
                     seed: int = 0) -> list[Trajectory]:
        """One :class:`Trajectory` per row of ``actions [B, T]`` (outcome ESTIMATED, flagged so).

        Each step records the written text, who wrote it, the effective action, the router features,
        both models' token counts (small proposals counted even when discarded), the discarded
        proposal's text on escalation, the proposal's PRM score as ``confidence`` and the written
        step's PRM score as ``prm_score``.
        """
        a, idx = self._index(actions, episode_idx)
        if a.ndim != 2:
            raise ValueError(f"trajectories() takes actions [B, T], got {np.shape(actions)}")
        r = self.route(a, idx)
        feats = self.features(a, idx)
        logp = None if action_logp is None else np.asarray(action_logp, np.float32)
        if logp is not None and logp.shape[0] != a.shape[0]:
            raise ValueError(f"action_logp has {logp.shape[0]} rows, actions {a.shape[0]}")
        samples = np.broadcast_to(np.asarray(sample_idx), (a.shape[0],))
        out = []
        for b in range(a.shape[0]):
            e = self.episodes[int(idx[b])]
            steps = []
            for t in range(int(r.n_steps[b])):
                esc = bool(r.escalated[b, t])
                has_s = t < e.n_small
                steps.append(Step(
                    index=t,
                    text=e.large_steps[t] if esc else e.small_steps[t],
                    model=LARGE if esc else SMALL,
                    action=ESCALATE if esc else KEEP,
                    action_logp=float(logp[b, t]) if logp is not None and t < logp.shape[1] else 0.0,
                    features=feats[b, t].tolist(),
                    small_tokens=e.small_tokens[t] if has_s else 0,
                    large_tokens=e.large_tokens[t] if esc else 0,
                    small_text=e.small_steps[t] if esc and has_s else None,
                    confidence=e.small_prm[t] if has_s else None,
                    prm_score=e.large_prm[t] if esc else e.small_prm[t],
                    finish_reason="stop",
                ))
            last_large = bool(r.last_writer_large[b])
            out.append(Trajectory(
                query_id=e.id, sample_idx=int(samples[b]), policy_id=policy_id, steps=steps,
                answer_text=e.large_answer if last_large else e.small_answer,
                correct=bool(r.correct[b]), correct_is_estimate=True, seed=seed,
                meta={"world": "replay", "outcome_rule": self.outcome_rule,
                      "outcome_rule_params": dict(self.rule_params),
                      "outcome_observed": bool(r.observed[b]), "dataset": e.dataset, "gold": e.answer,
                      "last_writer": LARGE if last_large else SMALL,
                      "large_frac": float(r.large_frac[b])},
            ))
        return out
