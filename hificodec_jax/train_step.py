"""The GAN train state and the jitted train step (one D update, then one G update).

Order as in the reference (``train.py``): generator forward once; D step on the detached
reconstruction; G step against the *updated* D. The generator is pulled back once: its forward
is linearised with ``jax.vjp`` and the G losses only differentiate w.r.t. ``wav_hat`` (and the
quantizer loss), so D's weight gradients are never computed in the G phase.

Deviations (documented in the README): D sees real and fake as one concatenated batch (one
spectral-norm power iteration per D step; the reference iterates on each of its calls), and a
non-finite loss or gradient skips that update (counted in ``skipped``) instead of crashing.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from hificodec_jax import losses

sg = jax.lax.stop_gradient


class TrainState(flax.struct.PyTreeNode):
    """Everything a step reads and writes; checkpointed as a whole."""

    step: jax.Array  # [] int32
    g_params: Any  # encoder + quantizer ("loss" mode codebooks) + decoder
    d_params: Any
    g_opt_state: Any
    d_opt_state: Any
    vq: Any  # EMA codebook collection ({} in "loss" mode); never touched by optax
    spectral: Any  # MSD spectral-norm power-iteration vectors
    rng: (
        jax.Array
    )  # base key as raw uint32 key data (checkpointable); step key = fold_in(rng, step)
    skipped: jax.Array  # [2] int32: G and D updates skipped for non-finite values


def create_train_state(codec: nn.Module, discs: nn.Module, tx_g, tx_d, rng, segment_size: int):
    """A fresh state (jittable: use with ``jax.eval_shape`` and ``out_shardings``)."""
    k_g, k_d, k_state = jax.random.split(rng, 3)
    wav = jnp.zeros((1, segment_size), jnp.float32)
    g_vars = codec.init(k_g, wav)
    d_vars = discs.init(k_d, wav)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_vars["params"],
        d_params=d_vars["params"],
        g_opt_state=tx_g.init(g_vars["params"]),
        d_opt_state=tx_d.init(d_vars["params"]),
        vq=g_vars.get("vq", {}),
        spectral=d_vars.get("spectral", {}),
        rng=jax.random.key_data(k_state),
        skipped=jnp.zeros((2,), jnp.int32),
    )


def _split_real_fake(d_out: dict, batch: int):
    """D outputs on ``concat([real, fake])`` -> per family (real logits, fake logits, real
    fmaps, fake fmaps)."""
    out = {}
    for family, subs in d_out.items():
        rl = [lg[:batch] for lg, _ in subs]
        fl = [lg[batch:] for lg, _ in subs]
        rf = [[f[:batch] for f in fm] for _, fm in subs]
        ff = [[f[batch:] for f in fm] for _, fm in subs]
        out[family] = (rl, fl, rf, ff)
    return out


def _update_if_finite(tx, loss, grads, params, opt_state, extra_new, extra_old):
    """One optax update, applied only when ``loss`` and the gradient norm are finite.

    Returns ``(params, opt_state, extra, grad_norm, ok)``; ``extra`` (non-optax state updated
    by the same forward pass, e.g. EMA codebooks) follows the same decision.
    """
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_new = tx.update(grads, opt_state, params)
    new = (optax.apply_updates(params, updates), opt_new, extra_new)
    return (*_select(ok, new, (params, opt_state, extra_old)), grad_norm, ok)


def _select(pred, new, old):
    """``new`` if ``pred`` else ``old`` for whole pytrees, as one conditional.

    (A ``jnp.where`` per leaf, with a finiteness reduction per leaf, tripled the step's XLA
    compile time; a NaN/inf anywhere already makes the global gradient norm non-finite.)
    """
    return jax.lax.cond(pred, lambda: new, lambda: old)


def make_train_step(
    codec: nn.Module,
    discs: nn.Module,
    tx_g: optax.GradientTransformation,
    tx_d: optax.GradientTransformation,
    schedules: tuple[optax.Schedule, optax.Schedule],
    config: ml_collections.ConfigDict,
):
    """``step(state, batch) -> (state, metrics)`` (not yet jitted; see ``train.py``).

    ``batch = {"wav": [B, T] float32, "lengths": [B] int32}``; metrics are a flat dict of
    scalars (``loss/...``, ``vq/...``, ``grad_norm/...``, ``lr/...``, ``train/...``).
    """
    lc = config.loss
    sr = config.audio.sample_rate
    resolutions = losses.reference_mel_resolutions(sr)
    hinge = lc.adversarial == "hinge"
    d_loss_fn = losses.hinge_discriminator_loss if hinge else losses.lsgan_discriminator_loss
    g_adv_fn = losses.hinge_generator_loss if hinge else losses.lsgan_generator_loss
    fm_fn = functools.partial(
        losses.feature_matching_loss, normalized=lc.feature_matching == "normalized"
    )
    q_cfg = config.model.quantizer
    stream_names = [f"r{r}g{g}" for r in range(q_cfg.num_levels) for g in range(q_cfg.num_groups)]

    def step(state: TrainState, batch: dict):
        wav, lengths = batch["wav"], batch["lengths"]
        b = wav.shape[0]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        metrics = {}

        # -- generator forward, linearised once ------------------------------------------------
        def gen_fwd(g_params):
            out, upd = codec.apply(
                {"params": g_params, "vq": state.vq},
                wav,
                lengths,
                train=True,
                mutable=["vq"],
                rngs={"vq": rng},
            )
            return (out.wav_hat, out.loss), (out, upd.get("vq", {}))

        (wav_hat, q_loss), g_vjp, (out, vq_new) = jax.vjp(gen_fwd, state.g_params, has_aux=True)
        target = wav[:, : wav_hat.shape[1]]  # the codec keeps floor(T / hop) * hop samples

        # -- D step on the detached reconstruction -------------------------------------------
        def d_objective(d_params):
            d_out, upd = discs.apply(
                {"params": d_params, "spectral": state.spectral},
                jnp.concatenate([target, sg(wav_hat)]),
                update_stats=True,
                mutable=["spectral"],
            )
            total, parts = 0.0, {}
            for family, (rl, fl, _, _) in _split_real_fake(d_out, b).items():
                parts[f"loss/d_{family}"] = d_loss_fn(rl, fl)
                total = total + parts[f"loss/d_{family}"]
            return total, (parts, upd.get("spectral", {}))

        (d_loss, (d_parts, spectral_new)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
            state.d_params
        )
        d_params, d_opt_state, spectral, d_grad_norm, d_ok = _update_if_finite(
            tx_d, d_loss, d_grads, state.d_params, state.d_opt_state, spectral_new, state.spectral
        )
        metrics.update(d_parts)
        metrics["loss/d_total"] = d_loss
        metrics["grad_norm/d"] = d_grad_norm

        # -- G step against the updated D -----------------------------------------------------
        def g_wave_objective(wav_hat):
            d_out = discs.apply(
                {"params": d_params, "spectral": spectral}, jnp.concatenate([target, wav_hat])
            )
            parts = {}
            total = 0.0
            for family, (_, fl, rf, ff) in _split_real_fake(d_out, b).items():
                parts[f"loss/adv_{family}"] = g_adv_fn(fl)
                parts[f"loss/fm_{family}"] = fm_fn(rf, ff)
                total = total + lc.adversarial_weight * parts[f"loss/adv_{family}"]
                total = total + lc.feature_weight * parts[f"loss/fm_{family}"]
            mel, mel_terms = losses.multi_resolution_mel_loss(
                target, wav_hat, sample_rate=sr, resolutions=resolutions, lengths=lengths
            )
            parts["loss/mel"] = mel
            parts.update({f"loss/{k}": v for k, v in mel_terms.items()})
            total = total + lc.mel_weight * mel
            if lc.time_l1_weight > 0:
                mask = jnp.arange(wav_hat.shape[1])[None, :] < lengths[:, None]
                parts["loss/time_l1"] = losses.time_l1_loss(target, wav_hat, mask)
                total = total + lc.time_l1_weight * parts["loss/time_l1"]
            return total, parts

        (g_wave_loss, g_parts), dwav_hat = jax.value_and_grad(g_wave_objective, has_aux=True)(
            wav_hat
        )
        (g_grads,) = g_vjp((dwav_hat, jnp.asarray(lc.quantizer_weight, q_loss.dtype)))
        g_loss = g_wave_loss + lc.quantizer_weight * q_loss
        g_params, g_opt_state, vq, g_grad_norm, g_ok = _update_if_finite(
            tx_g, g_loss, g_grads, state.g_params, state.g_opt_state, vq_new, state.vq
        )
        metrics.update(g_parts)
        metrics["loss/quantizer"] = q_loss
        metrics["loss/g_total"] = g_loss
        metrics["grad_norm/g"] = g_grad_norm

        # -- bookkeeping ----------------------------------------------------------------------
        skipped = state.skipped + jnp.stack([~g_ok, ~d_ok]).astype(jnp.int32)
        for name, ppl in zip(stream_names, out.stats.perplexity, strict=False):
            metrics[f"vq/perplexity_{name}"] = ppl
        metrics["vq/dead_codes"] = jnp.sum(out.stats.dead_codes)
        metrics["lr/g"] = schedules[0](state.step)
        metrics["lr/d"] = schedules[1](state.step)
        metrics["train/skipped_g"] = skipped[0]
        metrics["train/skipped_d"] = skipped[1]
        new_state = state.replace(
            step=state.step + 1,
            g_params=g_params,
            d_params=d_params,
            g_opt_state=g_opt_state,
            d_opt_state=d_opt_state,
            vq=vq,
            spectral=spectral,
            skipped=skipped,
        )
        return new_state, metrics

    return step
