"""Optimizers for the generator (encoder + GRVQ + decoder) and the discriminators.

Reference: ``Adam(lr 2e-4, betas (0.5, 0.9), eps 1e-8)`` with ``ExponentialLR(0.98)`` stepped
once per epoch: the rate during epoch ``e`` (0-based) is ``lr * 0.98**e``. Here the same
staircase runs on the optimizer step count, one epoch being ``steps_per_epoch`` steps (the
training clips // the global batch, as the reference's loader counts them) unless
``decay_steps`` > 0 overrides it; optional extras: a linear warm-up and global-norm clipping.
EMA codebooks (the ``vq`` collection) never go through optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def update_if_finite(tx, loss, grads, params, opt_state, extra_new, extra_old):
    """One optax update, applied only when ``loss`` and the gradient norm are finite.

    Returns ``(params, opt_state, extra, grad_norm, ok)``; ``extra`` (non-optax state updated
    by the same forward pass, e.g. EMA codebooks) follows the same decision. The update runs
    inside one conditional, so that the new parameters and moments are not held next to the old
    ones until the end of the step, and one finiteness test (a NaN/inf anywhere already makes the
    global gradient norm non-finite) replaces a ``jnp.where`` per leaf, which compiles slowly.
    """
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(operands):
        grads, params, opt_state, extra_new, _ = operands
        updates, opt_new = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_new, extra_new

    def keep(operands):
        _, params, opt_state, _, extra_old = operands
        return params, opt_state, extra_old

    operands = (grads, params, opt_state, extra_new, extra_old)
    return (*jax.lax.cond(ok, apply, keep, operands), grad_norm, ok)
