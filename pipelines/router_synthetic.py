"""Router GRPO on the built-in synthetic routing world (smoke demo, tests, resumable training).

Each update: sample ``G`` routed trajectories for ``Q`` fresh queries with the current policy (in JAX),
score them with the reward registry (outcome + cost), group advantages, then the jitted GRPO update.
Update ``k`` draws its randomness from ``fold_in(seed_key, k)``, so a run resumed from a checkpoint at
update ``k`` continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from roro_jax.rl.advantages import group_advantages
from roro_jax.rl.checkpoint import Checkpointer
from roro_jax.rl.rewards import compute_rewards
from roro_jax.rl.trainer import RouterLearner
from roro_jax.router.mlp import action_logp_entropy
from roro_jax.worlds import synthetic


def make_collect(learner: RouterLearner, cfg):
    """Jitted ``collect(params, key) -> (batch, info)`` for the synthetic world."""
    s, g = cfg.synthetic, cfg.grpo
    weights = dict(cfg.reward.weights)
    if weights.get("process", 0.0):
        raise ValueError("the synthetic world has no Judge: set reward.weights.process=0")

    @jax.jit
    def collect(params, key):
        kq, ka, ko = jax.random.split(key, 3)
        q = synthetic.make_queries(kq, s.queries, s.steps, s.features)
        feats = synthetic.expand_groups(q.features, g.group_size)
        mask = synthetic.expand_groups(q.mask, g.group_size)
        critical = synthetic.expand_groups(q.critical, g.group_size)
        logits = learner.apply(params, feats)
        actions = jax.random.categorical(ka, logits).astype(jnp.int32)
        logp, _ = action_logp_entropy(logits, actions)
        correct, share = synthetic.outcomes(ko, actions, critical, mask)
        rewards, terms = compute_rewards({"correct": correct, "large_share": share}, weights,
                                         mode=cfg.reward.combine, group_size=g.group_size)
        adv = group_advantages(rewards, g.group_size, scale=g.adv_scale, eps=g.adv_eps)
        batch = {"features": feats, "actions": actions, "old_logp": logp * mask, "mask": mask,
                 "advantages": adv}
        info = {"reward": jnp.mean(rewards), "accuracy": jnp.mean(correct), "large_share": jnp.mean(share),
                **{f"reward/{k}": jnp.mean(v) for k, v in terms.items()}}
        return batch, info

    return collect


def train_router_synthetic(cfg, *, resume: bool = True, stop_after: int | None = None, progress: bool = True):
    """Train for ``cfg.train.updates`` updates (or stop after ``stop_after`` of this call); returns
    ``(learner, history)`` where history holds one dict of floats per update of this run."""
    learner = RouterLearner(cfg, cfg.synthetic.features)
    collect = make_collect(learner, cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(cfg.checkpoint.dir or out / "checkpoints", cfg.checkpoint.every, cfg.checkpoint.keep)
    start = 0
    if resume and ckpt.latest_step() is not None:
        learner.restore(ckpt)
        start = learner.step
    log_path = out / "metrics.jsonl"
    kept = []
    if start and log_path.exists():  # drop log lines of updates after the restored checkpoint
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["update"] <= start]
    log_path.write_text("".join(ln + "\n" for ln in kept))
    key = jax.random.PRNGKey(cfg.seed)
    end = cfg.train.updates if stop_after is None else min(cfg.train.updates, start + stop_after)
    history = []
    bar = tqdm(range(start, end), desc="router GRPO (synthetic)", disable=not progress, initial=start,
               total=cfg.train.updates)
    with log_path.open("a") as log:
        for k in bar:
            kc, ku = jax.random.split(jax.random.fold_in(key, k))
            batch, info = collect(learner.params, kc)
            metrics = learner.update(batch, ku)
            row = {"update": k + 1, **{n: float(v) for n, v in {**info, **metrics}.items()}}
            history.append(row)
            log.write(json.dumps(row) + "\n")
            bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.2f}",
                            esc=f"{row['large_share']:.2f}")
            learner.save(ckpt, {"update": k + 1}, force=(k + 1 == end))
    ckpt.close()
    return learner, history


def escalation_auc(learner: RouterLearner, cfg, key=None) -> float:
    """AUC of the learned escalation probability for telling critical from non-critical steps."""
    from scipy.stats import mannwhitneyu

    s = cfg.synthetic
    q = synthetic.make_queries(jax.random.PRNGKey(10_000 + cfg.seed) if key is None else key, 256, s.steps,
                               s.features)
    p = np.asarray(learner.escalate_prob(q.features))
    m = np.asarray(q.mask) > 0
    crit = np.asarray(q.critical)
    pos, neg = p[m & crit], p[m & ~crit]
    u = mannwhitneyu(pos, neg).statistic
    return float(u / (len(pos) * len(neg)))
