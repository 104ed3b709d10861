"""Alternating Judge / Rubricor optimisation with the statistical validation gate (RoRo stage 2).

:func:`run_alternating`:

1. Teacher rubrics (``teacher``: a name in :data:`~roro_jax.rubric.teacher.TEACHERS`; ``profile`` fits rule
   templates on the training pairs, ``checkpoints`` takes the reference steps of the problem) for the
   training queries; optional SFT of the Rubricor on them; the Rubricor then writes (greedily) every
   query's rubric, held-out queries included. A malformed rubric is replaced by the pair-free ``profile``
   rubric of that query (never by ground truth; counted in the results).
2. For each round r = 1..R:

   * **Judge phase** (Rubricor frozen): ``judge.steps`` Bradley–Terry updates on the training pairs, each
     Judge input reading its query's current rubric.
   * **Rubricor phase** (Judge frozen): ``grpo_steps`` GRPO updates (G sampled rubrics per query, rewarded
     by the Judge's accuracy on that query's training pairs); then every query's rubric is rewritten
     greedily and criteria failing the per-criterion checks on the training pairs are pruned.
   * after each phase the **gate** (:mod:`~roro_jax.rubric.gate`) compares held-out (validation) pair
     correctness before and after; a rejected phase is rolled back exactly (model and optimiser state,
     and the rubrics). Every decision is logged (JSONL); an accepted phase is checkpointed (orbax).

Splits are by query: no query's pairs are in two splits, so held-out accuracy measures generalisation
to queries neither model was trained on (the Rubricor writes their rubrics from their text and summary).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from roro_jax.pairs import process_quality
from roro_jax.rubric.format import RubricLimits, criterion_key, format_rubric, get_format, prune_rubric
from roro_jax.rubric.gate import GateConfig, GateLog, criteria_to_prune, criterion_stats, gated_phase
from roro_jax.rubric.judge import Judge, JudgeConfig, pair_correct
from roro_jax.rubric.rubricor import Rubricor, RubricorConfig, rubric_reward
from roro_jax.rubric.serialize import SerializeConfig, probe_trajectory, query_summary
from roro_jax.rubric.teacher import TEACHERS, get_teacher
from roro_jax.types import PreferencePair, Rubric, Trajectory


@dataclass
class RubricConfig:
    """Everything the rubric stage needs (the project config embeds it as ``rubric``)."""

    serialize: SerializeConfig = field(default_factory=SerializeConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rubricor: RubricorConfig = field(default_factory=RubricorConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    rounds: int = 2
    # a name in roro_jax.rubric.teacher.TEACHERS: profile | checkpoints
    teacher: str = field(default="profile", metadata={"registry": lambda: sorted(TEACHERS)})
    max_criteria: int = 4
    max_criterion_chars: int = 80
    sft: bool = True
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # train / validation (gate) / test
    split_seed: int = 0
    seed: int = 0
    no_rubric_baseline: bool = True
    out_dir: Optional[str] = None  # gate log + checkpoints; None = nothing written

    def limits(self) -> RubricLimits:
        return RubricLimits(max_criteria=self.max_criteria, max_criterion_chars=self.max_criterion_chars)


# ------------------------------------------------------------------------------------------ data

@dataclass
class RubricData:
    """Trajectories, queries and query-split pairs."""

    by_id: dict[str, Trajectory]
    queries: dict[str, str]  # query id -> text
    summaries: dict[str, str]  # query id -> Rubricor summary
    probes: dict[str, Trajectory | None]
    train: list[PreferencePair]
    val: list[PreferencePair]
    test: list[PreferencePair]

    def pairs_of(self, split: str) -> list[PreferencePair]:
        return getattr(self, split)

    @property
    def query_ids(self) -> list[str]:
        return sorted(self.queries)

    def split_queries(self, split: str) -> list[str]:
        return sorted({p.query_id for p in self.pairs_of(split)})


def split_queries(query_ids: Sequence[str], fracs: Sequence[float], seed: int) -> list[set[str]]:
    """Disjoint query sets with the given fractions (seeded; the last set takes the remainder)."""
    q = sorted(query_ids)
    perm = np.random.default_rng(seed).permutation(len(q))
    f = np.asarray(fracs, float) / np.sum(fracs)
    cuts = np.round(np.cumsum(f)[:-1] * len(q)).astype(int)
    return [{q[i] for i in part} for part in np.split(perm, cuts)]


def make_data(trajectories: Sequence[Trajectory], pairs: Sequence[PreferencePair], queries: dict[str, str] | None,
              cfg: RubricConfig) -> RubricData:
    by_id = {t.traj_id: t for t in trajectories}
    by_q: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_q.setdefault(t.query_id, []).append(t)
    qtext = {q: (queries or {}).get(q, "") for q in by_q}
    missing = [p for p in pairs if p.preferred not in by_id or p.rejected not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} pairs name trajectories that were not given, e.g. {missing[0]}")
    tr, va, te = split_queries([q for q in by_q], cfg.split, cfg.split_seed)
    return RubricData(
        by_id=by_id, queries=qtext,
        summaries={q: query_summary(ts, cfg.serialize) for q, ts in by_q.items()},
        probes={q: probe_trajectory(ts) for q, ts in by_q.items()},
        train=[p for p in pairs if p.query_id in tr], val=[p for p in pairs if p.query_id in va],
        test=[p for p in pairs if p.query_id in te])


def by_query(pairs: Sequence[PreferencePair]) -> dict[str, list[PreferencePair]]:
    out: dict[str, list[PreferencePair]] = {}
    for p in pairs:
        out.setdefault(p.query_id, []).append(p)
    return out


# ------------------------------------------------------------------------------------------ metrics

def accuracy_report(correct: np.ndarray, pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    """Overall and per-kind pairwise accuracy."""
    c = np.asarray(correct, bool)
    out = {"acc": float(c.mean()) if c.size else math.nan, "n": int(c.size)}
    kinds = sorted({p.kind for p in pairs})
    for kind in kinds:
        m = np.array([p.kind == kind for p in pairs])
        out[f"acc_{kind}"] = float(c[m].mean())
        out[f"n_{kind}"] = int(m.sum())
    out["acc_macro"] = float(np.mean([out[f"acc_{k}"] for k in kinds])) if kinds else math.nan
    return out


def process_quality_correct(pairs: Sequence[PreferencePair], by_id: dict[str, Trajectory],
                            weights=(0.5, 0.3, 0.2)) -> np.ndarray:
    """Baseline (a): the rule-based process score orders a pair right (strictly; NaN/ties are wrong)."""
    return np.array([process_quality(by_id[p.preferred], weights) > process_quality(by_id[p.rejected], weights)
                     for p in pairs], bool)


# ------------------------------------------------------------------------------------------ rubrics

class RubricBook:
    """The current rubric of every query, and how it was obtained."""

    def __init__(self, fallback: dict[str, Rubric]):
        self.fallback = fallback
        self.rubrics: dict[str, Rubric] = dict(fallback)
        self.source: dict[str, str] = {q: "fallback" for q in fallback}
        self.reasons: dict[str, str] = {}

    def copy_state(self):
        return dict(self.rubrics), dict(self.source), dict(self.reasons)

    def set_state(self, st) -> None:
        self.rubrics, self.source, self.reasons = dict(st[0]), dict(st[1]), dict(st[2])

    def update_from(self, parsed: dict[str, Any]) -> None:
        for q, pr in parsed.items():
            if pr.ok:
                self.rubrics[q], self.source[q] = pr.rubric, "rubricor"
                self.reasons.pop(q, None)
            else:
                self.rubrics[q], self.source[q] = self.fallback[q], "fallback"
                self.reasons[q] = pr.reason

    def malformed_share(self, qids: Sequence[str]) -> float:
        return float(np.mean([self.source[q] == "fallback" for q in qids])) if qids else math.nan


class TeacherRubricWarning(UserWarning):
    """Teacher rubrics (the Rubricor's SFT targets) that the rubric parser rejects."""


def check_teacher_rubrics(teacher: dict[str, Rubric], limits: RubricLimits, name: str,
                          output: str = "numbered") -> dict[str, str]:
    """Query id -> parser's reason, for the teacher rubrics that would not parse as the Rubricor's output.

    A Rubricor fine-tuned on such targets writes rubrics the book rejects, so every query falls back to the
    profile rubric while the run looks healthy; this warns (:class:`TeacherRubricWarning`) with the count.
    ``output``: the Rubricor's text format (a name in :data:`~roro_jax.rubric.format.RUBRIC_FORMATS`)."""
    fmt = get_format(output)
    bad = {}
    for q, rub in teacher.items():
        pr = fmt.parse(fmt.write(rub), q, limits)
        if not pr.ok:
            bad[q] = pr.reason
    if bad:
        q0 = next(iter(bad))
        warnings.warn(f"rubric.teacher={name}: {len(bad)} of {len(teacher)} teacher rubrics do not parse "
                      f"(e.g. {q0}: {bad[q0]}); the Rubricor learns to write rubrics that fall back to the "
                      f"profile rubric", TeacherRubricWarning, stacklevel=2)
    return bad


def write_rubrics(rubricor: Rubricor, data: RubricData, qids: Sequence[str]) -> dict[str, Any]:
    prompts = [rubricor.prompt_ids(data.queries[q], data.summaries[q]) for q in qids]
    out = {}
    for i in range(0, len(qids), 64):
        for q, pr in zip(qids[i:i + 64], rubricor.write(prompts[i:i + 64], qids[i:i + 64])):
            out[q] = pr
    return out


def prune_book(book: RubricBook, judge: Judge, data: RubricData, cfg: RubricConfig) -> dict[str, str]:
    """Per-criterion checks on the training pairs; prune failing criteria from every rubric. Returns them."""
    items, index = [], {}
    for p in data.train:
        for tid in (p.preferred, p.rejected):
            if (p.query_id, tid) not in index:
                index[(p.query_id, tid)] = len(items)
                items.append((data.queries[p.query_id], book.rubrics[p.query_id], data.by_id[tid]))
    if not items:
        return {}
    _, probs = judge.scores(items, return_probs=True)
    recs, vals = [], []
    for (q, tid), i in index.items():
        for k, c in enumerate(book.rubrics[q].criteria[:cfg.max_criteria]):
            vals.append((criterion_key(c.text), float(probs[i, k])))
    for p in data.train:
        ip, ir = index[(p.query_id, p.preferred)], index[(p.query_id, p.rejected)]
        for k, c in enumerate(book.rubrics[p.query_id].criteria[:cfg.max_criteria]):
            recs.append((criterion_key(c.text), float(probs[ip, k]), float(probs[ir, k])))
    drop = criteria_to_prune(criterion_stats(recs, vals), cfg.gate)
    if drop:
        for q in list(book.rubrics):
            book.rubrics[q] = prune_rubric(book.rubrics[q], set(drop))
    return drop


# ------------------------------------------------------------------------------------------ the loop

def _save(ckpt_dir: Path | None, name: str, step: int, state, meta: dict) -> None:
    if ckpt_dir is None:
        return
    from roro_jax.rl.checkpoint import Checkpointer

    ck = Checkpointer(ckpt_dir / name, keep=2)
    ck.maybe_save(step, state, meta, force=True)
    ck.close()


def run_alternating(cfg: RubricConfig, data: RubricData, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the alternating loop; returns per-phase held-out metrics and the gate decisions."""
    t0 = time.time()
    rng = np.random.default_rng(cfg.seed)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    gate_log = GateLog(None if out_dir is None else out_dir / "gate.jsonl")
    ckpt_dir = None if out_dir is None else out_dir / "checkpoints"
    limits = cfg.limits()
    train_q = data.split_queries("train")
    tr_by_q = by_query(data.train)

    # 1. teacher rubrics, SFT, first rubrics
    teach = get_teacher(cfg.teacher)
    teacher = {q: teach(q, data.queries[q], data.probes[q], tr_by_q.get(q, ()), data.by_id,
                        max_criteria=cfg.max_criteria) for q in train_q}
    bad_teacher = check_teacher_rubrics(teacher, limits, cfg.teacher, cfg.rubricor.output)
    # a malformed rubric falls back to the pair-free profile rubric (never to ground truth)
    fallback = {q: get_teacher("profile")(q, data.queries[q], data.probes[q], max_criteria=cfg.max_criteria)
                for q in data.query_ids}
    judge = Judge(cfg.judge, cfg.serialize, max_criteria=cfg.max_criteria, seed=cfg.seed)
    rubricor = Rubricor(cfg.rubricor, cfg.serialize, limits, seed=cfg.seed + 1000)
    book = RubricBook(fallback)
    results: dict[str, Any] = {"seed": cfg.seed, "phases": [], "gate": [],
                               "teacher_unparsed": len(bad_teacher)}
    if cfg.sft:
        prompts = [rubricor.prompt_ids(data.queries[q], data.summaries[q]) for q in train_q]
        targets = [rubricor.format_target(teacher[q]) for q in train_q]
        losses = rubricor.sft(prompts, targets, steps=cfg.rubricor.sft_steps, rng=rng)
        results["sft_loss"] = [losses[0], losses[-1]] if losses else []
        log(f"[seed {cfg.seed}] SFT loss {losses[0]:.3f} -> {losses[-1]:.3f} ({time.time() - t0:.0f}s)")
    book.update_from(write_rubrics(rubricor, data, data.query_ids))
    results["malformed_initial"] = book.malformed_share(data.query_ids)
    val_correct = lambda: pair_correct(judge, data.val, data.by_id, data.queries, book.rubrics)[0]

    def record(phase: str, rnd: int, decision=None, extra=None):
        te = accuracy_report(pair_correct(judge, data.test, data.by_id, data.queries, book.rubrics)[0], data.test)
        rec = {"phase": phase, "round": rnd, "test": te, "malformed": book.malformed_share(data.query_ids),
               "time_s": time.time() - t0, **(extra or {})}
        if decision is not None:
            rec["gate"] = decision.to_dict()
        results["phases"].append(rec)
        log(f"[seed {cfg.seed}] round {rnd} {phase}: test acc {te['acc']:.3f}"
            + (f" | gate {'ACCEPT' if decision.accept else 'reject'} val {decision.acc_old:.3f}->"
               f"{decision.acc_new:.3f} p={decision.p_value:.3g}" if decision else "")
            + f" ({rec['time_s']:.0f}s)")
        return rec

    cur_val = val_correct()
    record("init", 0)
    for rnd in range(1, cfg.rounds + 1):
        # Judge phase
        hist: list[dict] = []
        d, _, cur_val = gated_phase(judge.snapshot, judge.restore,
                                    lambda: hist.extend(judge.train_steps(data.train, data.by_id, data.queries,
                                                                          book.rubrics, steps=cfg.judge.steps,
                                                                          rng=rng)),
                                    val_correct, alpha=cfg.gate.alpha, enabled=cfg.gate.enabled, old_correct=cur_val)
        gate_log.write(phase="judge", round=rnd, **d.to_dict(), decision="accept" if d.accept else "rollback")
        results["gate"].append({"phase": "judge", "round": rnd, **d.to_dict()})
        if d.accept:
            _save(ckpt_dir, "judge", rnd, judge.state, {"round": rnd, "phase": "judge"})
        record("judge", rnd, d, {"train_loss": hist[-1]["loss"] if hist else None})

        # Rubricor phase
        grpo_hist: list[dict] = []
        pruned: dict[str, str] = {}

        def rubricor_phase():
            qs = [q for q in train_q if q in tr_by_q]
            for _ in range(cfg.rubricor.grpo_steps):
                batch_q = list(rng.choice(qs, size=min(cfg.rubricor.grpo_queries, len(qs)), replace=False))
                grpo_hist.append(grpo_step(rubricor, judge, data, batch_q, tr_by_q, cfg, rng))
            book.update_from(write_rubrics(rubricor, data, data.query_ids))
            if cfg.gate.prune:
                pruned.update(prune_book(book, judge, data, cfg))

        d, _, cur_val = gated_phase(lambda: (rubricor.snapshot(), book.copy_state()),
                                    lambda s: (rubricor.restore(s[0]), book.set_state(s[1])),
                                    rubricor_phase, val_correct, alpha=cfg.gate.alpha, enabled=cfg.gate.enabled,
                                    old_correct=cur_val)
        gate_log.write(phase="rubricor", round=rnd, **d.to_dict(), decision="accept" if d.accept else "rollback",
                       pruned=pruned)
        results["gate"].append({"phase": "rubricor", "round": rnd, **d.to_dict(), "pruned": pruned})
        if d.accept:
            _save(ckpt_dir, "rubricor", rnd, rubricor.state, {"round": rnd, "phase": "rubricor"})
        record("rubricor", rnd, d, {"reward_mean": [h["reward_mean"] for h in grpo_hist],
                                    "malformed_sampled": [h["malformed"] for h in grpo_hist],
                                    "pruned": pruned})
    results["rubrics_example"] = {q: format_rubric(book.rubrics[q]) for q in data.split_queries("test")[:3]}
    results["judge"], results["rubricor"], results["book"] = judge, rubricor, book
    results["time_s"] = time.time() - t0
    return results


def grpo_step(rubricor: Rubricor, judge: Judge, data: RubricData, batch_q: Sequence[str],
              pairs_by_q: dict[str, list[PreferencePair]], cfg: RubricConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Sample G rubrics per query, reward them with the frozen Judge, one GRPO update."""
    rc = cfg.rubricor
    G = rc.group_size
    prompts, qids = [], []
    for q in batch_q:
        p = rubricor.prompt_ids(data.queries[q], data.summaries[q])
        prompts += [p] * G
        qids += [q] * G
    seeds = rng.integers(0, 2**31 - 1, size=len(prompts))
    outs = rubricor.generate(prompts, temperature=rc.temperature, seeds=seeds)
    parsed = [rubricor.parse(text, q) for (_, text), q in zip(outs, qids)]
    # the query's reward pairs: a fixed subsample shared by its G samples
    reward_pairs = {}
    for q in batch_q:
        ps = pairs_by_q[q]
        idx = rng.permutation(len(ps))[:rc.reward_pairs]
        reward_pairs[q] = [ps[i] for i in idx]
    items, spans = [], []
    for pr, q in zip(parsed, qids):
        if not pr.ok:
            spans.append(None)
            continue
        start = len(items)
        for p in reward_pairs[q]:
            items.append((data.queries[q], pr.rubric, data.by_id[p.preferred]))
            items.append((data.queries[q], pr.rubric, data.by_id[p.rejected]))
        spans.append((start, len(items)))
    s = judge.scores(items) if items else np.zeros(0)
    rewards = []
    for pr, sp in zip(parsed, spans):
        if sp is None:
            rewards.append(rubric_reward(pr, None, None, kind=rc.reward, malformed_reward=rc.malformed_reward))
        else:
            v = s[sp[0]:sp[1]]
            rewards.append(rubric_reward(pr, v[0::2], v[1::2], kind=rc.reward, malformed_reward=rc.malformed_reward,
                                         target_chars=rc.target_chars, length_penalty=rc.length_penalty))
    m = rubricor.grpo_update(prompts, [ids for ids, _ in outs], rewards)
    m["reward_mean"] = float(np.nanmean(rewards))
    m["malformed"] = float(np.mean([not pr.ok for pr in parsed]))
    return m


def run_no_rubric(cfg: RubricConfig, data: RubricData, *, steps: int | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Ablation (b): the same backbone reading no rubric (one scalar), trained for the same number of Judge
    steps as the alternating loop's Judge phases together (``rounds × judge.steps``) on the same pairs."""
    t0 = time.time()
    jc = dataclasses.replace(cfg.judge, use_rubric=False)
    judge = Judge(jc, cfg.serialize, max_criteria=cfg.max_criteria, seed=cfg.seed)
    steps = cfg.rounds * cfg.judge.steps if steps is None else steps
    hist = judge.train_steps(data.train, data.by_id, data.queries, None, steps=steps,
                             rng=np.random.default_rng(cfg.seed))
    out = {"seed": cfg.seed, "steps": steps,
           "val": accuracy_report(pair_correct(judge, data.val, data.by_id, data.queries, None)[0], data.val),
           "test": accuracy_report(pair_correct(judge, data.test, data.by_id, data.queries, None)[0], data.test),
           "train_loss": hist[-1]["loss"] if hist else None, "time_s": time.time() - t0, "judge": judge}
    log(f"[seed {cfg.seed}] no-rubric Judge ({steps} steps): test acc {out['test']['acc']:.3f} ({out['time_s']:.0f}s)")
    return out
