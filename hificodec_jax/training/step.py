"""The GAN train state and the jitted train step (one D update, then one G update).

Order as in the reference (``train.py``): generator forward once; D step on the detached
reconstruction; G step against the *updated* D. The generator is pulled back once: its forward
is linearised with ``jax.vjp`` and the G losses only differentiate w.r.t. ``wav_hat`` (and the
quantizer loss), so D's weight gradients are never computed in the G phase.

The discriminator side runs one sub-discriminator at a time (forward and backward), so the
activations of only one are alive at once, each on every device's own rows of the batch. The
phases are functions of their own (:func:`generator_forward`,
:func:`discriminator_gradients`, :func:`generator_gradients`), which
:mod:`~hificodec_jax.reference.parity` runs in the same order to compare every term with
the reference's training-parity fixture.

Deviations (documented in docs/deviations.md): D sees real and fake as one batch of
alternating rows (:func:`real_and_fake`); ``disc.spectral_norm_iterations="per_step"`` runs
MSD's power iteration once per step (torch's ``"per_call"``: before each real and fake call, D
and G phase); a non-finite loss or gradient skips that update (counted in ``skipped``) instead
of crashing.
Optional, off by default: ``loss.reuse_real_features`` takes the G phase's feature-matching
targets from the D phase's forward pass on the real audio (D before its update) instead of a
second forward pass with the updated D (one forward pass per sub-discriminator less).
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

from hificodec_jax.audio.spectral import mel_spectrogram
from hificodec_jax.models import discriminators
from hificodec_jax.models.layers import param_init_key
from hificodec_jax.models.quantizer import stream_names
from hificodec_jax.training import losses, optim, sharding

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
    rng: jax.Array  # base key as raw uint32 key data; step key = fold_in(rng, step)
    skipped: jax.Array  # [2] int32: G and D updates skipped for non-finite values


def create_train_state(codec: nn.Module, discs: nn.Module, tx_g, tx_d, rng, segment_size: int):
    """A fresh state (jittable: use with ``jax.eval_shape`` and ``out_shardings``)."""
    k_g, k_d, k_state = jax.random.split(rng, 3)
    wav = jnp.zeros((1, segment_size), jnp.float32)
    g_vars = codec.init(param_init_key(k_g), wav)
    d_vars = discs.init(param_init_key(k_d), wav)
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


def _after(x, previous):
    """``x``, computed only once ``previous`` is: an ordering constraint for XLA's scheduler.

    The sub-discriminators are independent of each other, so XLA may run all their forward
    passes before any backward pass and hold every activation at once. Making each one's input
    depend on the previous one's gradient keeps the activations of about one sub-discriminator
    alive at a time.
    ``optimization_barrier`` does not do it: XLA CPU removes barriers before scheduling. The
    dependency is ``x + 0 * s`` with ``s`` a finite scalar drawn from every leaf of
    ``previous`` (XLA does not fold a float multiply by zero), so ``x`` is unchanged.
    """
    if previous is None:
        return x
    s = sum(jnp.ravel(leaf)[0] for leaf in jax.tree.leaves(previous))
    return x + 0.0 * jnp.where(jnp.isfinite(s), s, 0.0).astype(x.dtype)


def real_and_fake(real: jax.Array, fake: jax.Array) -> jax.Array:
    """``real`` and ``fake`` ``[B, ...]`` as one discriminator batch ``[2B, ...]`` of alternating
    rows ``real_0, fake_0, real_1, ...``: with the batch split over chips every chip keeps its
    own rows (concatenated along the batch, half of them would move between chips each step)."""
    return jnp.stack([real, fake], axis=1).reshape(-1, *real.shape[1:])


def _real_fake_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The real and the fake rows of an output over a :func:`real_and_fake` batch."""
    x = x.reshape(-1, 2, *x.shape[1:])
    return x[:, 0], x[:, 1]


def discriminator_gradients(
    units,
    d_params,
    spectral,
    d_in,
    d_loss_fn,
    *,
    keep_real_fmaps: bool = False,
    with_logits: bool = False,
    per_call: bool = False,
):
    """D losses and gradients on ``d_in = real_and_fake(real, fake)``, one sub-discriminator at
    a time.

    Returns ``(parts, grads, new_spectral, real_fmaps)``: ``parts["loss/d_<family>"]`` summed
    over the family's sub-discriminators; ``grads`` and ``new_spectral`` (one power iteration
    of MSD's spectral norm) are trees shaped like ``d_params`` and ``spectral``.
    Sub-discriminators own disjoint parameters, so each one's gradient is its own subtree of
    the whole gradient. ``real_fmaps`` is ``None``, or with ``keep_real_fmaps`` per unit the
    feature maps of the real half of ``d_in`` from this forward pass (for
    ``loss.reuse_real_features``). ``with_logits`` adds each sub-discriminator's mean logit on
    the real and the fake rows as ``parts["logits/<family>_<index>_{real,fake}"]``.
    ``per_call`` runs a spectral-normed sub-discriminator on the real and the fake rows as two
    calls, one power iteration before each (torch's), instead of one call and one iteration.
    """
    calls = 2 if per_call else 1
    parts, grads, new_spectral, real_fmaps, previous = {}, [], [], [], None
    for unit in units:

        def objective(p, unit=unit, x=d_in, previous=previous):
            (logits, fmaps), spec = unit.apply(
                p, unit.subtree(spectral), _after(x, previous), update_stats=True, calls=calls
            )
            real = [sg(_real_fake_rows(f)[0]) for f in fmaps] if keep_real_fmaps else []
            real_logits, fake_logits = _real_fake_rows(logits)
            means = (jnp.mean(real_logits), jnp.mean(fake_logits))
            return d_loss_fn([real_logits], [fake_logits]), (spec, real, means)

        (loss, (spec, real, means)), g = jax.value_and_grad(objective, has_aux=True)(
            unit.subtree(d_params)
        )
        key = f"loss/d_{unit.family}"
        parts[key] = parts.get(key, 0.0) + loss
        if with_logits:
            parts[f"logits/{unit.family}_{unit.index}_real"] = means[0]
            parts[f"logits/{unit.family}_{unit.index}_fake"] = means[1]
        grads.append(g)
        new_spectral.append(spec)
        real_fmaps.append(real)
        previous = g
    return (
        parts,
        discriminators.assemble(units, grads),
        discriminators.assemble(units, new_spectral),
        real_fmaps if keep_real_fmaps else None,
    )


def adversarial_wave_gradient(
    units, d_params, spectral, target, wav_hat, g_adv_fn, lc, real_fmaps=None
):
    """Adversarial + feature-matching losses of ``wav_hat`` and their gradient w.r.t. it.

    One sub-discriminator at a time: its forward pass on ``target`` (no gradient: the real
    features are constants for the generator), then forward and input gradient on ``wav_hat``
    (D's weight gradients are never formed in the G phase). Real and fake are separate calls
    here, as in the reference, so the backward pass covers the fake half only. ``real_fmaps``
    (per unit, e.g. from :func:`discriminator_gradients` with ``keep_real_fmaps``) replaces
    the forward pass on ``target``: the feature-matching targets then come from whichever
    parameters produced them, not from ``d_params``. ``spectral``: the spectral-norm vectors of
    both calls, or a pair ``(real, fake)`` of them (:func:`g_phase_spectral`).
    Returns ``(parts, dL/dwav_hat)`` with ``parts["loss/adv_<family>"]``,
    ``parts["loss/fm_<family>"]`` (per family, as ``feature_matching_loss`` over all of the
    family's sub-discriminators) and ``parts["loss/adversarial_total"]`` (the weighted sum
    that was differentiated).
    """
    normalized = lc.feature_matching == "normalized"
    fm_layers = {}  # layers per family: the normalised feature matching averages over them
    for unit in units:
        fm_layers[unit.family] = fm_layers.get(unit.family, 0) + unit.num_fmaps
    parts, total, dwav, previous = {}, 0.0, None, None
    for i, unit in enumerate(units):
        sp_pair = spectral if isinstance(spectral, tuple) else (spectral, spectral)
        p, sp, sp_fake = unit.subtree(d_params), *(unit.subtree(t) for t in sp_pair)
        if real_fmaps is None:
            (_, real), _ = unit.apply(p, sp, sg(_after(target, previous)))
        else:
            real = real_fmaps[i]

        def objective(wh, unit=unit, p=p, sp=sp_fake, real=real, previous=previous):
            (logits, fmaps), _ = unit.apply(p, sp, _after(wh, previous))
            adv = g_adv_fn([logits])
            fm_sum, _ = losses.feature_matching_terms([real], [fmaps], normalized=normalized)
            fm = losses.finish_feature_matching(
                fm_sum, fm_layers[unit.family], normalized=normalized
            )
            return lc.adversarial_weight * adv + lc.feature_weight * fm, (adv, fm)

        (loss, (adv, fm)), g = jax.value_and_grad(objective, has_aux=True)(wav_hat)
        for key, value in ((f"loss/adv_{unit.family}", adv), (f"loss/fm_{unit.family}", fm)):
            parts[key] = parts.get(key, 0.0) + value
        total = total + loss
        dwav = g if dwav is None else dwav + g
        previous = dwav
    parts["loss/adversarial_total"] = total
    if dwav is None:
        dwav = jnp.zeros_like(wav_hat)
    return parts, dwav


def adversarial_losses(lc: ml_collections.ConfigDict):
    """``(d_loss_fn, g_adv_fn)`` of the config's ``loss.adversarial`` ("lsgan" or "hinge")."""
    if lc.adversarial == "hinge":
        return losses.hinge_discriminator_loss, losses.hinge_generator_loss
    return losses.lsgan_discriminator_loss, losses.lsgan_generator_loss


def generator_forward(codec: nn.Module, g_params, vq, wav, lengths, rng):
    """The codec's training forward, linearised once with ``jax.vjp``.

    Returns ``(wav_hat, q_loss, g_vjp, out, vq_new)``: ``g_vjp((dL/dwav_hat, dL/dq_loss))``
    pulls a gradient back to ``g_params``; ``vq_new`` is the updated EMA collection.
    """

    def gen_fwd(g_params):
        out, upd = codec.apply(
            {"params": g_params, "vq": vq},
            wav,
            lengths,
            train=True,
            mutable=["vq"],
            rngs={"vq": rng},
        )
        return (out.wav_hat, out.loss), (out, upd.get("vq", {}))

    (wav_hat, q_loss), g_vjp, (out, vq_new) = jax.vjp(gen_fwd, g_params, has_aux=True)
    return wav_hat, q_loss, g_vjp, out, vq_new


def generator_gradients(
    units,
    d_params,
    spectral,
    target,
    wav_hat,
    lengths,
    q_loss,
    g_vjp,
    config,
    real_fmaps=None,
    mesh=None,
):
    """The G phase against discriminators ``d_params``: ``(parts, g_loss, g_grads)``.

    Adversarial and feature-matching terms one sub-discriminator at a time
    (:func:`adversarial_wave_gradient`), the mel (and optional waveform L1) terms, and the
    quantizer loss; ``g_grads`` is the whole objective's gradient pulled back through ``g_vjp``
    (from :func:`generator_forward`). ``parts`` holds every ``loss/...`` term, ``loss/quantizer``
    and ``loss/g_total``. ``spectral``: as :func:`adversarial_wave_gradient`'s. ``mesh``: the
    one the batch is split over (the spectrograms are computed on each device's own rows).
    """
    lc = config.loss
    sr = config.audio.sample_rate
    res = losses.reference_mel_resolutions(sr)
    spec = sharding.on_own_rows(mel_spectrogram, mesh)
    g_adv_fn = adversarial_losses(lc)[1]
    g_parts, dwav_adv = adversarial_wave_gradient(
        units, d_params, spectral, target, wav_hat, g_adv_fn, lc, real_fmaps
    )

    def wave_objective(wav_hat):
        mel, mel_terms = losses.multi_resolution_mel_loss(
            target, wav_hat, sample_rate=sr, resolutions=res, lengths=lengths, spectrogram=spec
        )
        parts = {"loss/mel": mel, **{f"loss/{k}": v for k, v in mel_terms.items()}}
        total = lc.mel_weight * mel
        if lc.time_l1_weight > 0:
            mask = jnp.arange(wav_hat.shape[1])[None, :] < lengths[:, None]
            parts["loss/time_l1"] = losses.time_l1_loss(target, wav_hat, mask)
            total = total + lc.time_l1_weight * parts["loss/time_l1"]
        return total, parts

    (wave_loss, wave_parts), dwav_wave = jax.value_and_grad(wave_objective, has_aux=True)(wav_hat)
    g_parts.update(wave_parts)
    g_wave_loss = g_parts.pop("loss/adversarial_total") + wave_loss
    (g_grads,) = g_vjp((dwav_adv + dwav_wave, jnp.asarray(lc.quantizer_weight, q_loss.dtype)))
    g_loss = g_wave_loss + lc.quantizer_weight * q_loss
    g_parts["loss/quantizer"] = q_loss
    g_parts["loss/g_total"] = g_loss
    return g_parts, g_loss, g_grads


def g_phase_spectral(d_params, spectral, *, per_call: bool, reuse_real: bool = False):
    """MSD's spectral-norm vectors ``(real, fake)`` for the G phase's calls on the real and the
    generated audio: the D phase's ``spectral``, or with ``per_call`` one more power iteration
    on ``d_params`` before each call, as torch's training-mode calls (no real call with
    ``loss.reuse_real_features``). The fake ones are what the step stores."""
    if not per_call:
        return spectral, spectral
    real = spectral if reuse_real else discriminators.power_iterations(d_params, spectral, 1)
    return real, discriminators.power_iterations(d_params, real, 1)


def make_train_step(
    codec: nn.Module,
    discs: nn.Module,
    tx_g: optax.GradientTransformation,
    tx_d: optax.GradientTransformation,
    schedules: tuple[optax.Schedule, optax.Schedule],
    config: ml_collections.ConfigDict,
    mesh=None,
):
    """``step(state, batch) -> (state, metrics)`` (not yet jitted; see ``compilation.build``).

    ``batch = {"wav": [B, T] float32, "lengths": [B] int32}``; metrics are a flat dict of
    scalars (``loss/...``, ``vq/...``, ``grad_norm/...``, ``lr/...``, ``train/...``). With the
    ``mesh`` the batch is split over, every discriminator call runs on each device's own rows.
    """
    lc = config.loss
    d_loss_fn = adversarial_losses(lc)[0]
    units = [sharding.OwnRows(u, mesh) for u in discriminators.sub_discriminators(discs)]
    # Deviation, off by default: feature-matching targets from the D phase's forward pass on
    # the real audio (D before its update) instead of a second forward with the updated D.
    reuse_real = bool(lc.get("reuse_real_features", False))
    per_call = discriminators.power_iterations_per_call(discs)
    q_cfg = config.model.quantizer
    names = stream_names(q_cfg.num_levels * q_cfg.num_groups, q_cfg.num_groups)
    g_phase = functools.partial(generator_gradients, mesh=mesh)

    def step(state: TrainState, batch: dict):
        wav, lengths = batch["wav"], batch["lengths"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        metrics = {}

        # -- generator forward, linearised once ------------------------------------------------
        wav_hat, q_loss, g_vjp, out, vq_new = generator_forward(
            codec, state.g_params, state.vq, wav, lengths, rng
        )
        target = wav[:, : wav_hat.shape[1]]  # the codec keeps floor(T / hop) * hop samples

        # -- D step on the detached reconstruction -------------------------------------------
        d_parts, d_grads, spectral_new, real_fmaps = discriminator_gradients(
            units,
            state.d_params,
            state.spectral,
            real_and_fake(target, sg(wav_hat)),
            d_loss_fn,
            keep_real_fmaps=reuse_real,
            per_call=per_call,
        )
        d_loss = sum(d_parts.values())
        d_params, d_opt_state, spectral, d_grad_norm, d_ok = optim.update_if_finite(
            tx_d, d_loss, d_grads, state.d_params, state.d_opt_state, spectral_new, state.spectral
        )
        metrics.update(d_parts)
        metrics["loss/d_total"] = d_loss
        metrics["grad_norm/d"] = d_grad_norm

        # -- G step against the updated D -----------------------------------------------------
        spectral_g = g_phase_spectral(d_params, spectral, per_call=per_call, reuse_real=reuse_real)
        g_parts, g_loss, g_grads = g_phase(
            units, d_params, spectral_g, target, wav_hat, lengths, q_loss, g_vjp, config, real_fmaps
        )
        spectral = spectral_g[1]  # the last call's
        g_params, g_opt_state, vq, g_grad_norm, g_ok = optim.update_if_finite(
            tx_g, g_loss, g_grads, state.g_params, state.g_opt_state, vq_new, state.vq
        )
        metrics.update(g_parts)
        metrics["grad_norm/g"] = g_grad_norm

        # -- bookkeeping ----------------------------------------------------------------------
        skipped = state.skipped + jnp.stack([~g_ok, ~d_ok]).astype(jnp.int32)
        for name, ppl in zip(names, out.stats.perplexity, strict=False):
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
