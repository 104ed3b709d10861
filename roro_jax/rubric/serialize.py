"""Trajectories (and queries) as text for the Judge and the Rubricor.

Two styles, chosen by name from :data:`STYLES` (add one with :func:`register_style`):

* ``compact`` (tiny character-level LMs): a header line and one 2-character glyph per step::

      n22 e3 L340 S1210 f8
      s9s9L4s8...

  glyph = who wrote the step (``s`` small model kept, ``L`` large model after an escalation), then the
  small model's proposal confidence as a decile digit (``int(10·c)`` capped at 9; ``-`` if unknown).
  Header: steps, escalations, large-model tokens, small-model tokens, and the PRM score (decile) of the
  last written step (the step holding the final answer).
* ``reasoning`` (the Judge reads the reasoning; any LM): one line per step with who wrote it, the small
  model's confidence as a two-digit code and the step's text; an escalated step also shows the small
  model's discarded proposal, so a Judge can see whether an escalation replaced a wrong step or a right
  one::

      s24 5 - 3 = 2
      L03 2 + 7 = 9 | s: 2 + 7 = 8
      s30 Answer: 9

  The code is ``round(-10·log10(1 − c))`` clipped to 0..99 (``--`` if unknown): small models' confidences
  crowd near 1 (the toy SRM's median is 0.996), where deciles are all 9 and cannot rank steps; this code
  keeps them apart (0.5 → 03, 0.9 → 10, 0.99 → 20, 0.996 → 24).

  (step texts are whitespace-collapsed and cut to ``step_text_chars`` characters when that is > 0).
* ``verbose`` (real LMs): one line per step::

      Step 4 [large, escalated] conf=0.41 prm=0.88 tokens=120: <first step_text_chars of the text>

**Truncation** (both styles). When the rendered steps exceed ``max_chars``, steps are kept in this order
of priority until the budget is reached: the first ``keep_first`` steps, the last ``keep_last`` steps,
the escalated steps (least confident first), then the remaining steps least confident first. Kept steps
stay in trajectory order; each run of omitted steps is shown as one marker (``~k`` in ``compact``,
``... k steps omitted ...`` in ``verbose``). The header (step count, escalations, token totals) always
describes the whole trajectory. If even the first/last steps do not fit, steps are dropped from the end
of that priority list too, so the result never exceeds ``max_chars`` (the header excepted).

The query is collapsed to single spaces and cut to ``query_chars`` characters (``...`` marks a cut).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from roro_jax.types import ESCALATE, LARGE, Trajectory


@dataclass
class SerializeConfig:
    """How trajectories and queries become text (see the module docstring)."""

    style: str = field(default="compact", metadata={"registry": lambda: sorted(STYLES)})
    max_chars: int = 60  # budget of the step part (header excluded)
    keep_first: int = 2
    keep_last: int = 2
    query_chars: int = 24
    step_text_chars: int = 0  # verbose style only: characters of each step's text (0 = none)


def _decile(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    return str(min(9, max(0, int(float(x) * 10))))


def header(traj: Trajectory) -> str:
    fin = _decile(traj.steps[-1].prm_score) if traj.steps else "-"
    return f"n{len(traj.steps)} e{traj.n_escalations} L{traj.large_tokens} S{traj.small_tokens} f{fin}"


def _compact_step(traj: Trajectory, t: int, cfg: SerializeConfig) -> str:
    s = traj.steps[t]
    who = "L" if (s.model == LARGE or s.action == ESCALATE) else "s"
    return who + _decile(s.confidence)


def _verbose_step(traj: Trajectory, t: int, cfg: SerializeConfig) -> str:
    s = traj.steps[t]
    esc = s.action == ESCALATE
    who = "large, escalated" if esc else "small, kept"
    conf = "n/a" if s.confidence is None else f"{s.confidence:.2f}"
    prm = "n/a" if s.prm_score is None else f"{s.prm_score:.2f}"
    ntok = s.large_tokens if esc else s.small_tokens
    line = f"Step {t + 1} [{who}] conf={conf} prm={prm} tokens={ntok}"
    if cfg.step_text_chars > 0:
        text = " ".join(s.text.split())
        line += ": " + (text[:cfg.step_text_chars] + ("..." if len(text) > cfg.step_text_chars else ""))
    return line + "\n"


def _step_text(text: str | None, limit: int) -> str:
    t = " ".join(str(text or "").split())
    return t if limit <= 0 or len(t) <= limit else t[:limit] + "..."


def confidence_code(x: float | None) -> str:
    """Two digits, ``round(-10·log10(1 − x))`` clipped to 0..99; ``--`` if unknown (see ``reasoning``)."""
    if x is None or x != x:
        return "--"
    u = -10.0 * math.log10(max(1.0 - float(x), 1e-10))
    return f"{min(99, max(0, int(round(u)))):02d}"


def _reasoning_step(traj: Trajectory, t: int, cfg: SerializeConfig) -> str:
    s = traj.steps[t]
    esc = s.model == LARGE or s.action == ESCALATE
    line = ("L" if esc else "s") + confidence_code(s.confidence) + " " + _step_text(s.text, cfg.step_text_chars)
    if esc and s.small_text is not None:
        line += " | s: " + _step_text(s.small_text, cfg.step_text_chars)
    return line + "\n"


@dataclass(frozen=True)
class Style:
    step: Callable[[Trajectory, int, SerializeConfig], str]
    omitted: Callable[[int], str]
    join: str


STYLES: dict[str, Style] = {
    "compact": Style(_compact_step, lambda k: f"~{k}", ""),
    "verbose": Style(_verbose_step, lambda k: f"... {k} steps omitted ...\n", ""),
    "reasoning": Style(_reasoning_step, lambda k: f"~{k}\n", ""),
    # the small model's proposal confidence only, one digit per step (query summaries)
    "profile": Style(lambda tr, t, c: _decile(tr.steps[t].confidence), lambda k: f"~{k}", ""),
}


def register_style(name: str, style: Style) -> None:
    STYLES[name] = style


def _style(cfg: SerializeConfig) -> Style:
    if cfg.style not in STYLES:
        raise KeyError(f"unknown serialisation style {cfg.style!r}; known: {sorted(STYLES)}")
    return STYLES[cfg.style]


def step_priority(traj: Trajectory, keep_first: int, keep_last: int) -> list[int]:
    """Step indices in the order truncation keeps them (see the module docstring)."""
    n = len(traj.steps)
    order: list[int] = []
    seen: set[int] = set()

    def add(ts):
        for t in ts:
            if 0 <= t < n and t not in seen:
                seen.add(t)
                order.append(t)

    add(range(min(keep_first, n)))
    add(range(max(n - keep_last, 0), n))

    def conf(t):
        c = traj.steps[t].confidence
        return (1.0 if c is None else float(c), t)

    add(sorted((t for t in range(n) if traj.steps[t].action == ESCALATE), key=conf))
    add(sorted(range(n), key=conf))
    return order


def _render(traj: Trajectory, keep: Sequence[int], cfg: SerializeConfig, st: Style) -> str:
    keep = sorted(keep)
    parts: list[str] = []
    prev = -1
    for t in keep:
        if t > prev + 1:
            parts.append(st.omitted(t - prev - 1))
        parts.append(st.step(traj, t, cfg))
        prev = t
    if prev < len(traj.steps) - 1:
        parts.append(st.omitted(len(traj.steps) - 1 - prev))
    return st.join.join(parts)


def step_line(traj: Trajectory, t: int, cfg: SerializeConfig = SerializeConfig()) -> str:
    """Step ``t`` alone, rendered in the configured style (no truncation)."""
    return _style(cfg).step(traj, t, cfg)


def serialize_steps(traj: Trajectory, cfg: SerializeConfig = SerializeConfig()) -> str:
    """The step part only (no header), truncated to ``cfg.max_chars``."""
    st = _style(cfg)
    n = len(traj.steps)
    full = _render(traj, range(n), cfg, st)
    if len(full) <= cfg.max_chars:
        return full
    order = step_priority(traj, cfg.keep_first, cfg.keep_last)
    best = _render(traj, [], cfg, st) if len(_render(traj, [], cfg, st)) <= cfg.max_chars else ""
    for k in range(1, n + 1):  # the rendered length grows by at most one step + marker per added step
        out = _render(traj, order[:k], cfg, st)
        if len(out) > cfg.max_chars:
            break
        best = out
    return best


def serialize_trajectory(traj: Trajectory, cfg: SerializeConfig = SerializeConfig()) -> str:
    """Header line + steps (truncated per the module docstring)."""
    return header(traj) + "\n" + serialize_steps(traj, cfg)


def serialize_query(query: str, cfg: SerializeConfig = SerializeConfig()) -> str:
    q = " ".join(str(query).split())
    if len(q) > cfg.query_chars:
        q = q[:max(cfg.query_chars - 3, 0)] + "..."
    return q


# -------------------------------------------------------------------------------- query summaries

def probe_trajectory(trajs: Sequence[Trajectory]) -> Trajectory | None:
    """The query's trajectory with the fewest escalations (ties: the most steps, then the first id)."""
    if not trajs:
        return None
    return min(trajs, key=lambda t: (t.n_escalations, -len(t.steps), t.traj_id))


def query_summary(trajs: Sequence[Trajectory], cfg: SerializeConfig = SerializeConfig()) -> str:
    """What the Rubricor sees of a query besides its text: the small model's confidence profile.

    The per-step proposal confidences (deciles) of :func:`probe_trajectory`, truncated like the steps,
    and the step count. Outcomes are deliberately left out (they define the pairs being predicted).
    """
    p = probe_trajectory(trajs)
    if p is None:
        return "none"
    cfg_c = SerializeConfig(style="profile", max_chars=cfg.max_chars, keep_first=cfg.keep_first,
                            keep_last=cfg.keep_last)
    return f"n{len(p.steps)} " + serialize_steps(p, cfg_c)
