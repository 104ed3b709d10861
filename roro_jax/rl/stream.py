"""Training the router over a trajectory store of any size, streaming: memory stays flat in the store size.

A collection appends trajectories to a :class:`~roro_jax.store.TrajectoryStore` in the order they finish,
so the G samples of a query arrive close together but not necessarily adjacent. :func:`iter_groups`
regroups the stream, holding only the groups still open (bounded by how far apart a collection writes
one query's samples, i.e. by its ``max_live``, never by the store size); :func:`iter_batches` pads
``groups_per_batch`` complete groups into one GRPO batch with group advantages; :func:`train_on_store`
runs the learner's jitted update on each batch. The acting policy's stored log-probs are the update's
``old_logp``, so the PPO ratio corrects for the router that collected the data.

    learner = RouterLearner(cfg, in_features=8)
    history = train_on_store(learner, "runs/x/trajectories.jsonl", cfg, groups_per_batch=32)
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from roro_jax.types import Trajectory, pad_trajectories

__all__ = ["iter_batches", "iter_groups", "reward_inputs", "train_on_store"]


def reward_inputs(trajs: Sequence[Trajectory]) -> dict[str, np.ndarray]:
    """The per-trajectory fields the reward registry reads (``roro_jax.rl.rewards``): ``correct``,
    ``large_share`` (the ``cost`` term is minus it), ``escalation_rate``, ``small_tokens``, ``large_tokens``."""
    return {"correct": np.array([float(bool(t.correct)) for t in trajs], np.float32),
            "large_share": np.array([t.large_share for t in trajs], np.float32),
            "escalation_rate": np.array([t.n_escalations / max(len(t.steps), 1) for t in trajs], np.float32),
            "small_tokens": np.array([t.small_tokens for t in trajs], np.float32),
            "large_tokens": np.array([t.large_tokens for t in trajs], np.float32)}


def iter_groups(trajs: Iterable[Trajectory], group_size: int, stats: dict | None = None
                ) -> Iterator[list[Trajectory]]:
    """Complete groups (``group_size`` samples of one ``(query_id, policy_id)``, ordered by sample index)
    in the order they complete. Groups still incomplete at the end of the stream are dropped; ``stats``
    (if given) receives ``groups``, ``dropped_groups``, ``dropped_trajectories`` and ``max_open`` (the
    most groups held open at once: the memory bound)."""
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    open_: dict[tuple[str, str], dict[int, Trajectory]] = {}
    n_groups = max_open = 0
    for t in trajs:
        key = (str(t.query_id), str(t.policy_id))
        samples = open_.setdefault(key, {})
        samples[int(t.sample_idx)] = t
        max_open = max(max_open, len(open_))
        if len(samples) == group_size:
            del open_[key]
            n_groups += 1
            yield [samples[i] for i in sorted(samples)]
    if stats is not None:
        stats.update(groups=n_groups, dropped_groups=len(open_),
                     dropped_trajectories=sum(len(v) for v in open_.values()), max_open=max_open)


def iter_batches(groups: Iterable[list[Trajectory]], groups_per_batch: int, cfg, *, n_features: int
                 ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, float]]]:
    """``(batch, info)`` for every ``groups_per_batch`` complete groups (a last partial batch is dropped,
    so every batch has one compiled shape). ``batch`` holds ``features``, ``actions``, ``old_logp``,
    ``mask`` and ``advantages`` (rewards from ``cfg.reward``, advantages by ``cfg.grpo.adv_scale``);
    ``info`` the batch's mean reward, accuracy and large-token share."""
    from roro_jax.rl.advantages import advantages
    from roro_jax.rl.rewards import compute_rewards

    G = cfg.grpo.group_size
    buf: list[Trajectory] = []
    for group in groups:
        buf.extend(group)
        if len(buf) < groups_per_batch * G:
            continue
        arrays = pad_trajectories(buf, max_steps=cfg.rollout.max_steps, n_features=n_features)
        rb = reward_inputs(buf)
        rewards, _ = compute_rewards(rb, dict(cfg.reward.weights), mode=cfg.reward.combine, group_size=G)
        adv = advantages(rewards, G, estimator=cfg.grpo.adv_scale, eps=cfg.grpo.adv_eps)
        batch = {"features": arrays["features"], "actions": arrays["actions"], "old_logp": arrays["logp"],
                 "mask": arrays["mask"], "advantages": np.asarray(adv, np.float32)}
        info = {"reward": float(np.mean(rewards)), "accuracy": float(rb["correct"].mean()),
                "large_share": float(rb["large_share"].mean())}
        buf = []
        yield batch, info


def train_on_store(learner, store_path, cfg, *, groups_per_batch: int, epochs: int = 1, seed: int | None = None,
                   progress: bool = False, stats: dict | None = None) -> list[dict[str, Any]]:
    """``epochs`` streaming passes of GRPO updates over every complete group in the store at
    ``store_path``; returns one metrics row per update (device scalars fetched once per update, after it
    is dispatched)."""
    import jax
    from tqdm.auto import tqdm

    from roro_jax.router.features import get_family
    from roro_jax.store import TrajectoryStore

    store = TrajectoryStore(store_path)
    key = jax.random.PRNGKey(cfg.seed if seed is None else seed)
    n_features = get_family(cfg.router.features).dim
    history: list[dict[str, Any]] = []
    bar = tqdm(desc="router on store", unit="update", disable=not progress)
    for epoch in range(epochs):
        group_stats: dict = {}
        groups = iter_groups(store.iter(), cfg.grpo.group_size, group_stats)
        for batch, info in iter_batches(groups, groups_per_batch, cfg, n_features=n_features):
            metrics = learner.update(batch, jax.random.fold_in(key, len(history)))
            history.append({"update": len(history) + 1, "epoch": epoch, **info,
                            **{k: float(v) for k, v in metrics.items()}})
            bar.update()
        if stats is not None:
            stats[f"epoch{epoch}"] = group_stats
    bar.close()
    return history
