"""Optimizers for the generator (encoder + GRVQ + decoder) and the discriminators.

Reference: ``Adam(lr 2e-4, betas (0.5, 0.9), eps 1e-8)`` with ``ExponentialLR(0.98)`` stepped
once per epoch: the rate during epoch ``e`` (0-based) is ``lr * 0.98**e``. Here the same
staircase runs on the optimizer step count, one epoch being ``steps_per_epoch`` steps (the
training clips // the global batch, as the reference's loader counts them) unless
``decay_steps`` > 0 overrides it; optional extras: a linear warm-up and global-norm clipping.
EMA codebooks (the ``vq`` collection) never go through optax.
"""

from __future__ import annotations

import ml_collections
import optax


def decay_interval(cfg: ml_collections.ConfigDict, steps_per_epoch: int | None) -> int | None:
    """Optimizer steps between two ``lr_decay`` multiplications: ``cfg.decay_steps`` when > 0,
    else one epoch (``steps_per_epoch``; ``None`` when no dataset is known)."""
    if cfg.decay_steps > 0:
        return int(cfg.decay_steps)
    if steps_per_epoch is not None and steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    return steps_per_epoch


def make_schedule(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int | None = None
) -> optax.Schedule:
    """Warm-up (optional) then staircase exponential decay every :func:`decay_interval` steps.

    Without an interval (``decay_steps`` 0 and no ``steps_per_epoch``: programs built without
    a dataset, e.g. benchmarks) the rate stays at its first epoch's value.
    """
    interval = decay_interval(cfg, steps_per_epoch)
    if interval is None:
        decay = optax.constant_schedule(cfg.learning_rate)
    else:
        decay = optax.exponential_decay(
            cfg.learning_rate, transition_steps=interval, decay_rate=cfg.lr_decay, staircase=True
        )
    if cfg.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(
    cfg: ml_collections.ConfigDict, steps_per_epoch: int | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with the config's betas and schedule, clipped first if ``grad_clip_norm > 0``."""
    schedule = make_schedule(cfg, steps_per_epoch)
    chain = []
    if cfg.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    chain.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8)))
    return optax.chain(*chain), schedule
