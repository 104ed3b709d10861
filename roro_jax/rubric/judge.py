"""The Judge: a rubric-conditioned reward model (a :class:`~roro_jax.models.score.ScoreModel`).

**Input.** ``[BOS] "Q:" query "\\n" trajectory "\\nR:\\n"`` then, per criterion, ``text + " ?" + "\\n"``.
Each criterion's *marker* is the last token of its ``" ?"`` piece; the pieces are tokenised separately
and concatenated, so marker positions are exact for any tokenizer. The model reads one logit per marker
(the score head has one output); ``p_k = sigmoid(logit_k)`` is the probability that criterion k is met,
and the trajectory's score is ``s = Σ_k w_k p_k`` with the rubric's weights (normalised to sum 1), so
``s ∈ [0, 1]``. A causal LM sees the whole trajectory (and the earlier criteria) at every marker.

**Layouts** (``judge.layout``, a name in :data:`JUDGE_LAYOUTS`; :func:`register_layout` adds one):
``after`` is the input above (the criteria after the whole trajectory). ``interleaved`` is for checkpoint
rubrics, one criterion per reference step (the toy worlds' ``checkpoints`` teacher and a Rubricor with
``output: steps``): criterion k is read right after step k, ``[BOS] "Q:" query "\n" header "\n"`` then per
step its line and, while criteria remain, ``"R: " + text + " ?" + "\n"``; criteria beyond the route's
last step follow it. A small backbone then compares a step with its checkpoint where both sit side by
side instead of finding the step in a 400-character trajectory. Steps are not truncated in this layout.

**No-rubric ablation** (``use_rubric=False``): the same backbone and head read one marker after
``"S ?"``; ``s = sigmoid(logit)``.

**Training.** Bradley–Terry on score differences: ``-log σ(β (s_pref − s_rej))`` with ``β = bt_scale``
(scores are bounded, so β sets how sharp a margin of 1 is), averaged over pairs (optionally weighted).
:func:`make_judge_update` builds the jitted update ``(state, frozen, batch) -> (state, metrics)`` with
donated state: the generic update of :mod:`roro_jax.rl.update` on :func:`judge_loss_terms`, so it runs in
every parallel mode (``single``, ``shard_map``, ``pmap``, ``jit_sharded``: the pair axis sharded over a
``data`` mesh axis; loss sums, their denominator and the gradients ``psum``-ed, so the step equals the
single-device step up to float reassociation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from roro_jax.buckets import bucket, round_up
from roro_jax.models.score import ScoreModel
from roro_jax.rl.losses import bradley_terry_loss, safe_div
from roro_jax.rl.update import MODES, TrainState, init_state, make_optimizer, make_update
from roro_jax.rubric.lm import LMSpec, bos, build_lm, encode, trainable_filter
from roro_jax.rubric.serialize import SerializeConfig, header, serialize_query, serialize_trajectory, step_line
from roro_jax.types import PreferencePair, Rubric, Trajectory

MARKER = " ?"
SIDES = ("pref", "rej")


@dataclass
class JudgeConfig:
    model: LMSpec = field(default_factory=LMSpec)
    use_rubric: bool = True
    bt_scale: float = 8.0
    lr: float = 1e-3
    # cosine decay of the learning rate to lr_final_frac·lr over decay_steps optimiser steps (0 = constant lr);
    # (set it to the Judge steps of the whole rubric stage, rounds × steps, to decay once over the loop)
    decay_steps: int = 0
    lr_final_frac: float = 0.1
    max_grad_norm: float = 1.0
    batch_pairs: int = 16
    steps: int = 80  # optimiser steps per Judge phase
    # single | shard_map | pmap | jit_sharded (batch_pairs: a multiple of the devices)
    parallel: str = field(default="single", metadata={"choices": MODES})
    kind_weights: str = "none"  # none | balanced (pair weight ∝ 1 / count of its kind: kinds weigh equally)
    len_multiple: int = 32  # sequence lengths are padded up to a multiple of this
    # where the criteria sit in the Judge's input: a name in JUDGE_LAYOUTS (after | interleaved | holistic)
    layout: str = field(default="after", metadata={"registry": lambda: sorted(JUDGE_LAYOUTS)})


# ------------------------------------------------------------------------------------------ encoding

Encoded = tuple[list[int], list[int], list[float]]  # (token ids, marker positions, criterion weights)


class JudgeEncoder:
    """Token ids and marker positions of Judge inputs; caches the pieces (queries, trajectories, criteria)."""

    def __init__(self, tokenizer, serialize: SerializeConfig, *, use_rubric: bool = True, max_criteria: int = 6,
                 layout: str = "after"):
        self.tok, self.ser, self.use_rubric, self.max_criteria = tokenizer, serialize, use_rubric, max_criteria
        self.layout = get_layout(layout)
        self._cache: dict[str, list[int]] = {}
        self._marker = encode(tokenizer, MARKER)
        self._nl = encode(tokenizer, "\n")
        if not self._marker:
            raise ValueError("the tokenizer encodes the marker ' ?' to nothing")

    def piece(self, text: str) -> list[int]:
        """Token ids of a piece of text (memoised on the text; bounded)."""
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            ids = self._cache[text] = encode(self.tok, text)
        return ids

    def criteria(self, rubric: Rubric | None, traj: Trajectory):
        """The criteria the rubric Judge reads (at most ``max_criteria``); an error without any."""
        if rubric is None or not rubric.criteria:
            raise ValueError(f"the rubric Judge needs a rubric with criteria for query {traj.query_id}")
        return rubric.criteria[:self.max_criteria]

    def criterion(self, ids: list[int], pos: list[int], w: list[float], text: str, weight: float) -> list[int]:
        """``ids`` + the criterion's text and marker + newline; its marker position and weight appended."""
        ids = ids + self.piece(text) + self._marker
        pos.append(len(ids) - 1)
        w.append(float(weight))
        return ids + self._nl

    def question(self, query: str) -> list[int]:
        """``[BOS] "Q:" query "\\n"``: how every layout starts."""
        return bos(self.tok) + self.piece("Q:" + serialize_query(query, self.ser) + "\n")

    def prefix(self, query: str, traj: Trajectory) -> list[int]:
        """The question, then the (truncated) trajectory and ``"\\nR:\\n"``."""
        return self.question(query) + self.piece(serialize_trajectory(traj, self.ser) + "\nR:\n")

    def score_marker(self, ids: list[int]) -> Encoded:
        """``ids`` + ``"S ?"``: one marker that scores the whole input (weight 1)."""
        ids = ids + self.piece("S") + self._marker
        return ids, [len(ids) - 1], [1.0]

    def encode(self, query: str, rubric: Rubric | None, traj: Trajectory) -> Encoded:
        """``(ids, marker positions, weights)`` of one Judge input (per the layout; the no-rubric Judge reads
        one marker after ``"S"``)."""
        if not self.use_rubric:
            return self.score_marker(self.prefix(query, traj))
        return self.layout(self, query, rubric, traj)

    @property
    def n_outputs(self) -> int:
        return self.max_criteria if self.use_rubric else 1


def layout_after(enc: JudgeEncoder, query: str, rubric: Rubric | None, traj: Trajectory) -> Encoded:
    """Query, the (truncated) trajectory, ``"R:"``, then every criterion with its marker."""
    ids = enc.prefix(query, traj)
    pos: list[int] = []
    w: list[float] = []
    for c in enc.criteria(rubric, traj):
        ids = enc.criterion(ids, pos, w, c.text, c.weight)
    return ids, pos, w


def layout_interleaved(enc: JudgeEncoder, query: str, rubric: Rubric | None, traj: Trajectory) -> Encoded:
    """Query, header, then each step's line followed by its criterion (``"R: " + text``); criteria left
    when the steps run out follow the last step."""
    crit = list(enc.criteria(rubric, traj))
    ids = enc.question(query) + enc.piece(header(traj) + "\n")
    pos: list[int] = []
    w: list[float] = []
    for t in range(len(traj.steps)):
        line = step_line(traj, t, enc.ser)
        ids = ids + enc.piece(line if line.endswith("\n") else line + "\n")
        if t < len(crit):
            ids = enc.criterion(ids, pos, w, "R: " + crit[t].text, crit[t].weight)
    for c in crit[len(traj.steps):]:
        ids = enc.criterion(ids, pos, w, "R: " + c.text, c.weight)
    return ids, pos, w


def layout_holistic(enc: JudgeEncoder, query: str, rubric: Rubric | None, traj: Trajectory) -> Encoded:
    """Query, the (truncated) trajectory, ``"R:"``, every criterion's text (no markers), then ``"S ?"``: one
    score for the whole route with the rubric in context."""
    ids = enc.prefix(query, traj)
    for c in enc.criteria(rubric, traj):
        ids = ids + enc.piece(c.text) + enc._nl
    return enc.score_marker(ids)


JUDGE_LAYOUTS: dict[str, Callable[[JudgeEncoder, str, Rubric | None, Trajectory], Encoded]] = {
    "after": layout_after,
    "interleaved": layout_interleaved,
    "holistic": layout_holistic,
}


def register_layout(name: str, fn: Callable[[JudgeEncoder, str, Rubric | None, Trajectory], Encoded]) -> None:
    """Add a Judge input layout: ``fn(encoder, query, rubric, trajectory) -> (ids, marker positions, weights)``,
    built from the encoder's pieces (``question``, ``prefix``, ``piece``, ``criterion``, ``score_marker``)."""
    JUDGE_LAYOUTS[name] = fn


def get_layout(name: str):
    if name not in JUDGE_LAYOUTS:
        raise KeyError(f"unknown Judge layout {name!r}; known: {sorted(JUDGE_LAYOUTS)}")
    return JUDGE_LAYOUTS[name]


def pad_inputs(encoded: Sequence[Encoded], k: int, *, len_multiple: int = 32,
               rows: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Right-padded arrays: ``ids`` [B, L] int32, ``mask`` [B, L] bool, ``pos`` [B, K] int32, ``w`` [B, K].

    Criteria beyond an input's own have weight 0 (and read position 0). ``rows`` pads the batch with
    empty rows (mask 0, weights 0) up to that many.
    """
    n = len(encoded)
    b = max(n, rows or 0)
    length = round_up(max(len(e[0]) for e in encoded), len_multiple)
    ids = np.full((b, length), pad_id, np.int32)
    mask = np.zeros((b, length), bool)
    pos = np.zeros((b, k), np.int32)
    w = np.zeros((b, k), np.float32)
    for i, (x, p, wt) in enumerate(encoded):
        ids[i, :len(x)] = x
        mask[i, :len(x)] = True
        pos[i, :len(p)] = p
        w[i, :len(wt)] = wt
    return {"ids": ids, "mask": mask, "pos": pos, "w": w}


# ------------------------------------------------------------------------------------------ pure math

def criterion_probs(model: ScoreModel, ids, mask, pos) -> jax.Array:
    """``p`` [B, K]: probability that each criterion is met (sigmoid of the logit read at its marker)."""
    return jax.nn.sigmoid(model(ids, mask, pos)[..., 0])


def weighted_score(probs, w) -> jax.Array:
    """``s = Σ_k w_k p_k / Σ_k w_k`` per row (0 for a row without weights): [B] in [0, 1]."""
    return safe_div(jnp.sum(probs * w, -1), jnp.sum(w, -1))


def bt_terms(score_pref, score_rej, pair_weight, scale: float) -> dict[str, jax.Array]:
    """Additive pieces of the Bradley–Terry loss: ``loss = loss_sum / loss_den`` (``loss_den`` = Σ pair
    weights); ``correct_sum`` and ``margin_sum`` give the weighted accuracy and mean margin."""
    loss = bradley_terry_loss(scale * score_pref, scale * score_rej, pair_weight)
    return {"loss_sum": jnp.sum(loss), "loss_den": jnp.sum(pair_weight),
            "correct_sum": jnp.sum((score_pref > score_rej) * pair_weight),
            "margin_sum": jnp.sum((score_pref - score_rej) * pair_weight)}


def pair_scores(model: ScoreModel, batch) -> tuple[jax.Array, jax.Array]:
    """Scores of both sides of a pair batch in one forward pass: ``(s_pref [B], s_rej [B])``."""
    ids = jnp.concatenate([batch["pref_ids"], batch["rej_ids"]])
    mask = jnp.concatenate([batch["pref_mask"], batch["rej_mask"]])
    pos = jnp.concatenate([batch["pref_pos"], batch["rej_pos"]])
    w = jnp.concatenate([batch["pref_w"], batch["rej_w"]])
    s = weighted_score(criterion_probs(model, ids, mask, pos), w)
    b = batch["pref_ids"].shape[0]
    return s[:b], s[b:]


# ------------------------------------------------------------------------------------------ model/state

def build_judge(cfg: JudgeConfig, *, seed: int = 0):
    """``(ScoreModel, tokenizer)``: the backbone per ``cfg.model`` and a zero-initialised 1-output head."""
    backbone, tok = build_lm(cfg.model, seed=seed)
    model = ScoreModel(backbone, 1, rngs=nnx.Rngs(seed))
    return model, tok


def split_judge(model: ScoreModel, cfg: JudgeConfig):
    """``(graphdef, trainable, frozen)`` states of the Judge."""
    return nnx.split(model, trainable_filter(cfg.model, ("head_kernel", "head_bias")), ...)


def judge_optimizer(cfg: JudgeConfig) -> optax.GradientTransformation:
    """:func:`roro_jax.rl.update.make_optimizer` with the Judge's learning rate (a cosine decay over
    ``decay_steps`` when set) and clip norm."""
    lr = optax.cosine_decay_schedule(cfg.lr, cfg.decay_steps, alpha=cfg.lr_final_frac) if cfg.decay_steps > 0 \
        else cfg.lr
    return make_optimizer(lr, cfg.max_grad_norm)


def judge_loss_terms(graphdef, scale: float):
    """The Judge's ``loss_terms_fn(params, minibatch, rng)``: :func:`bt_terms` of a pair minibatch, the
    frozen part of the model in ``minibatch["consts"]``."""

    def terms(params, mb, rng):
        model = nnx.merge(graphdef, params, mb["consts"])
        sp, sr = pair_scores(model, mb)
        return bt_terms(sp, sr, mb["pair_weight"], scale)

    return terms


def make_judge_update(graphdef, tx, scale: float, *, mode: str = "single", mesh: Mesh | None = None,
                      donate: bool = True) -> Callable:
    """``update(state, frozen, batch) -> (state, metrics)``: one jitted BT step (see the module docstring),
    :func:`roro_jax.rl.update.make_update` of :func:`judge_loss_terms`; ``metrics``: ``loss``, ``accuracy``,
    ``margin`` (weighted over pairs), ``grad_norm``.

    ``batch``: ``{side}_ids/_mask/_pos/_w`` for side in (pref, rej), and ``pair_weight`` [B].
    """
    def metrics(t):
        return {"loss": safe_div(t["loss_sum"], t["loss_den"]), "accuracy": safe_div(t["correct_sum"], t["loss_den"]),
                "margin": safe_div(t["margin_sum"], t["loss_den"])}

    inner = make_update(judge_loss_terms(graphdef, scale), tx, mode=mode, mesh=mesh, donate=donate,
                        metrics_fn=metrics)
    key = jax.random.PRNGKey(0)  # the BT loss draws no randomness

    def update(state, frozen, batch):
        return inner(state, batch, key, frozen)

    return update


def copy_tree(tree):
    """A deep copy of a pytree of arrays (new buffers: safe against donation)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else np.array(x, copy=True),
                        tree)


# ------------------------------------------------------------------------------------------ the Judge

class Judge:
    """A trainable Judge: model + tokenizer + encoder + optimiser state.

    ``scores(items)`` scores ``(query, rubric, trajectory)`` triples (in [0, 1]); ``train_steps(...)``
    runs BT updates on pairs; ``snapshot()``/``restore()`` copy the whole training state.
    """

    def __init__(self, cfg: JudgeConfig, serialize: SerializeConfig, *, max_criteria: int = 6, seed: int = 0,
                 mesh: Mesh | None = None):
        self.cfg, self.max_criteria, self.seed = cfg, max_criteria, seed
        model, self.tokenizer = build_judge(cfg, seed=seed)
        self.encoder = JudgeEncoder(self.tokenizer, serialize, use_rubric=cfg.use_rubric, max_criteria=max_criteria,
                                    layout=cfg.layout)
        self.graphdef, params, self.frozen = split_judge(model, cfg)
        self.tx = judge_optimizer(cfg)
        self.state = init_state(params, self.tx)
        self._update = make_judge_update(self.graphdef, self.tx, cfg.bt_scale, mode=cfg.parallel, mesh=mesh)
        self._score = jax.jit(self._score_impl)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

    def _score_impl(self, params, frozen, ids, mask, pos, w):
        model = nnx.merge(self.graphdef, params, frozen)
        p = criterion_probs(model, ids, mask, pos)
        return weighted_score(p, w), p

    # -- state
    def snapshot(self) -> TrainState:
        return copy_tree(self.state)

    def restore(self, state: TrainState) -> None:
        self.state = copy_tree(state)

    @property
    def model(self) -> ScoreModel:
        return nnx.merge(self.graphdef, self.state.params, self.frozen)

    # -- scoring
    def encode_many(self, items: Sequence[tuple[str, Rubric | None, Trajectory]]):
        return [self.encoder.encode(q, r, t) for q, r, t in items]

    def scores(self, items: Sequence[tuple[str, Rubric | None, Trajectory]], *, batch: int = 64,
               return_probs: bool = False):
        """Scores [N] in [0, 1] (and criterion probabilities [N, K] with ``return_probs``)."""
        enc = self.encode_many(items)
        out_s, out_p = [], []
        for i in range(0, len(enc), batch):
            chunk = enc[i:i + batch]
            arr = pad_inputs(chunk, self.encoder.n_outputs, len_multiple=self.cfg.len_multiple,
                             rows=min(bucket(len(chunk), 8), batch), pad_id=self.pad_id)
            s, p = self._score(self.state.params, self.frozen, arr["ids"], arr["mask"], arr["pos"], arr["w"])
            out_s.append(np.asarray(s)[:len(chunk)])
            out_p.append(np.asarray(p)[:len(chunk)])
        if not enc:
            return (np.zeros(0), np.zeros((0, self.encoder.n_outputs))) if return_probs else np.zeros(0)
        s = np.concatenate(out_s)
        return (s, np.concatenate(out_p)) if return_probs else s

    # -- training
    def pair_batch(self, pairs: Sequence[PreferencePair], by_id: dict[str, Trajectory], queries: dict[str, str],
                   rubrics: dict[str, Rubric] | None, pair_weight: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Arrays of a pair batch (both sides padded to a common length)."""
        rub = rubrics or {}
        enc = {side: [self.encoder.encode(queries.get(p.query_id, ""), rub.get(p.query_id),
                                          by_id[p.preferred if side == "pref" else p.rejected]) for p in pairs]
               for side in SIDES}
        length = round_up(max(len(e[0]) for side in SIDES for e in enc[side]), self.cfg.len_multiple)
        out = {}
        for side in SIDES:
            arr = pad_inputs(enc[side], self.encoder.n_outputs, len_multiple=length, pad_id=self.pad_id)
            for k, v in arr.items():
                out[f"{side}_{k}"] = v
        out["pair_weight"] = np.ones(len(pairs), np.float32) if pair_weight is None else \
            np.asarray(pair_weight, np.float32)
        return out

    def train_steps(self, pairs: Sequence[PreferencePair], by_id, queries, rubrics, *, steps: int,
                    rng: np.random.Generator, log: Callable[[int, dict], None] | None = None) -> list[dict]:
        """``steps`` BT updates on minibatches of ``cfg.batch_pairs`` pairs drawn without replacement per epoch."""
        history = []
        order = np.array([], int)
        bp = min(self.cfg.batch_pairs, len(pairs))
        weights = kind_weights(pairs, self.cfg.kind_weights)
        for i in range(steps):
            if len(order) < bp:
                order = np.concatenate([order, rng.permutation(len(pairs))])
            idx, order = order[:bp], order[bp:]
            batch = self.pair_batch([pairs[j] for j in idx], by_id, queries, rubrics, weights[idx])
            self.state, m = self._update(self.state, self.frozen, batch)
            m = {k: float(v) for k, v in m.items()}
            history.append(m)
            if log is not None:
                log(i, m)
        return history


def kind_weights(pairs: Sequence[PreferencePair], mode: str = "none") -> np.ndarray:
    """Per-pair BT weights: ``none`` = 1; ``balanced`` = ``N / (K · count(kind))`` (mean 1, kinds weigh equally)."""
    if mode == "none":
        return np.ones(len(pairs), np.float32)
    if mode != "balanced":
        raise ValueError(f"kind_weights must be none | balanced, got {mode!r}")
    kinds = [p.kind for p in pairs]
    counts = {k: kinds.count(k) for k in set(kinds)}
    return np.array([len(pairs) / (len(counts) * counts[k]) for k in kinds], np.float32)


def pair_correct(judge: Judge, pairs: Sequence[PreferencePair], by_id: dict[str, Trajectory],
                 queries: dict[str, str], rubrics: dict[str, Rubric] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(correct [P] bool, s_pref [P], s_rej [P])``: the Judge orders each pair strictly right (ties are wrong)."""
    rub = rubrics or {}
    items, index = [], {}
    for p in pairs:
        for tid in (p.preferred, p.rejected):
            if tid not in index:
                index[tid] = len(items)
                items.append((queries.get(p.query_id, ""), rub.get(p.query_id), by_id[tid]))
    s = judge.scores(items)
    sp = np.array([s[index[p.preferred]] for p in pairs])
    sr = np.array([s[index[p.rejected]] for p in pairs])
    return sp > sr, sp, sr


def score_trajectories(judge: Judge, query: str, rubric: Rubric | None, trajectories: Sequence[Trajectory]) -> np.ndarray:
    """The process reward the router trainer reads: the Judge's score of each trajectory under the query's
    rubric, in [0, 1] (a weighted sum of criterion probabilities; ``rubric`` ignored by a no-rubric Judge)."""
    return judge.scores([(query, rubric, t) for t in trajectories])
