"""Optimizers for the generator (encoder + GRVQ + decoder) and the discriminators.

Reference: ``Adam(lr 2e-4, betas (0.5, 0.9), eps 1e-8)`` with ``ExponentialLR(0.98)`` stepped
once per epoch. Deviation: an epoch depends on the dataset, so the decay is applied every
``decay_steps`` optimizer steps (staircase), with an optional linear warm-up and global-norm
clipping. EMA codebooks (the ``vq`` collection) never go through optax.
"""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Warm-up (optional) then staircase exponential decay."""
    decay = optax.exponential_decay(
        cfg.learning_rate, transition_steps=cfg.decay_steps, decay_rate=cfg.lr_decay, staircase=True
    )
    if cfg.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(
    cfg: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with the config's betas and schedule, clipped first if ``grad_clip_norm > 0``."""
    schedule = make_schedule(cfg)
    chain = []
    if cfg.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    chain.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8)))
    return optax.chain(*chain), schedule
