"""One training step's every term, named like the reference's training-parity fixture.

:func:`make_reference_probe` runs the train step's own pieces (:mod:`.step`: the generator
forward, the D phase one sub-discriminator at a time, D's optax update, the G phase) in the
reference loop's order and returns what ``train_cases.json`` holds (``tests/data/academicodec``
README, "Training-parity fixtures"): ``init/`` = the objective at the given weights (D phase
and G phase against the same D), ``step/`` = D phase, D's Adam step, then the G phase against
the updated D. The D phase is the same in both. Keys: ``{prefix}/d_{mpd,msd,stft}``,
``d_total``, ``logits_{family}_{real,fake}_mean`` (one value per sub-discriminator),
``gnorm_{mpd,msd,mstftd}``, ``gnorm_d``, ``grad_{mpd,msd,mstftd}``, ``mel_main``, ``mel_512``,
``mel_256``, ``mel``, ``fm_*``, ``adv_*``, ``quantizer``, ``g_total``,
``gnorm_{encoder,quantizer,generator}``, ``gnorm_g``, ``grad_{encoder,generator}`` (probe
gradients in torch layout).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hificodec_jax import factory
from hificodec_jax.models import discriminators
from hificodec_jax.reference import training_import as reference_import
from hificodec_jax.training import host_memory, optim
from hificodec_jax.training import step as train_step

__all__ = [
    "PROBES",
    "SCALAR_NAMES",
    "make_reference_probe",
    "reference_terms",
    "scalar_terms",
]

_D_SCALARS = ("d_mpd", "d_msd", "d_stft", "d_total", "gnorm_mpd", "gnorm_msd", "gnorm_mstftd")
_G_SCALARS = (
    *("mel_main", "mel_512", "mel_256", "mel", "fm_mpd", "adv_mpd", "fm_msd", "adv_msd"),
    *("fm_stft", "adv_stft", "quantizer", "g_total", "gnorm_encoder", "gnorm_quantizer"),
    *("gnorm_generator", "gnorm_g"),
)
# The fixture's scalar names (train_cases.json), in its order.
SCALAR_NAMES = tuple(
    f"{prefix}/{name}"
    for prefix in ("init", "step")
    for name in (*_D_SCALARS, "gnorm_d", *_G_SCALARS)
)

# Probe gradients: fixture name -> (params path, torch layout permutation, trailing 1 dims).
PROBES = {
    "grad_mpd": (("mpd", "discriminators_0", "convs_0", "weight_v"), (2, 1, 0), 1),
    "grad_msd": (("msd", "discriminators_1", "conv_post", "weight_v"), (2, 1, 0), 0),
    "grad_mstftd": (("mstftd", "discriminators_2", "conv_post", "weight_v"), (3, 2, 0, 1), 0),
    "grad_encoder": (("encoder", "conv_pre", "weight_v"), (2, 1, 0), 0),
    "grad_generator": (("decoder", "conv_post", "weight_v"), (2, 1, 0), 0),
}
G_MODULES = {"encoder": "encoder", "quantizer": "quantizer", "generator": "decoder"}


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _probe(grads, name: str) -> jax.Array:
    path, perm, trailing = PROBES[name]
    x = jnp.transpose(_get(grads, path), perm)
    return x.reshape(x.shape + (1,) * trailing)


def _g_terms(parts: dict, grads) -> dict[str, jax.Array]:
    out = {
        "mel_main": parts["loss/mel1024_hop200"]
        if "loss/mel1024_hop200" in parts
        else parts["loss/mel1024_hop240"],
        "mel_512": parts["loss/mel512_hop120"],
        "mel_256": parts["loss/mel256_hop60"],
        "mel": parts["loss/mel"],
    }
    for fam in ("mpd", "msd", "stft"):
        out[f"fm_{fam}"] = parts.get(f"loss/fm_{fam}", jnp.zeros(()))
        out[f"adv_{fam}"] = parts.get(f"loss/adv_{fam}", jnp.zeros(()))
    out["quantizer"] = parts["loss/quantizer"]
    out["g_total"] = parts["loss/g_total"]
    for name, module in G_MODULES.items():
        out[f"gnorm_{name}"] = optax.tree.norm(grads.get(module, {}))
    out["gnorm_g"] = optax.tree.norm(grads)
    out["grad_encoder"] = _probe(grads, "grad_encoder")
    out["grad_generator"] = _probe(grads, "grad_generator")
    return out


def make_reference_probe(
    codec: nn.Module,
    discs: discriminators.Discriminators,
    tx_d: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
):
    """``probe(state, wav [B, T]) -> {"init/...": array, "step/...": array}`` (jittable).

    ``state`` is a :class:`~hificodec_jax.training.step.TrainState` (its ``d_opt_state`` is
    ``tx_d``'s); the batch has no padding (``lengths = T``). MSD's spectral-norm power
    iterations follow ``discs.spectral_norm_iterations`` as in the train step. Also returns
    ``wav_hat``, ``d_spectral`` (the vectors after the D phase), ``step_d_params`` and
    ``step_spectral`` (D's parameters and vectors after the whole step).

    The same terms in pieces, each its own program: ``probe.d_phase(state, wav)`` (generator
    forward, D phase, D's update: ``(terms, extras)``, the ``d_*``/``logits_*``/``gnorm_*``
    terms unprefixed and the keys above but ``step_spectral``) and ``probe.g_phase(state, wav, d_params, spectral)`` (the generator
    forward again and the G phase against ``d_params``: the G terms unprefixed, ``spectral``
    the fake call's vectors). Run apart, the peak memory is the larger phase's, not their sum.
    """
    units = discriminators.sub_discriminators(discs)
    per_call = discriminators.power_iterations_per_call(discs)
    d_loss_fn = train_step.adversarial_losses(config.loss)[0]

    def forward(state, wav):
        lengths = jnp.full((wav.shape[0],), wav.shape[1], jnp.int32)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        wav_hat, q_loss, g_vjp, _, _ = train_step.generator_forward(
            codec, state.g_params, state.vq, wav, lengths, rng
        )
        return wav[:, : wav_hat.shape[1]], lengths, wav_hat, q_loss, g_vjp

    def d_terms_of(state, target, wav_hat):
        d_parts, d_grads, spectral_new, _ = train_step.discriminator_gradients(
            units,
            state.d_params,
            state.spectral,
            train_step.real_and_fake(target, jax.lax.stop_gradient(wav_hat)),
            d_loss_fn,
            with_logits=True,
            per_call=per_call,
        )
        d_loss = sum(v for k, v in d_parts.items() if k.startswith("loss/"))
        d_params, _, spectral, _, _ = optim.update_if_finite(
            tx_d, d_loss, d_grads, state.d_params, state.d_opt_state, spectral_new, state.spectral
        )
        d_terms = {f"d_{f}": d_parts.get(f"loss/d_{f}", jnp.zeros(())) for f in ("mpd", "msd")}
        d_terms["d_stft"] = d_parts.get("loss/d_stft", jnp.zeros(()))
        d_terms["d_total"] = d_loss
        for fam in ("mpd", "msd", "stft"):
            for half in ("real", "fake"):
                means = [d_parts[f"logits/{u.family}_{u.index}_{half}"] for u in units]
                means = [m for m, u in zip(means, units, strict=True) if u.family == fam]
                d_terms[f"logits_{fam}_{half}_mean"] = jnp.stack(means) if means else jnp.zeros(0)
        for section in ("mpd", "msd", "mstftd"):
            d_terms[f"gnorm_{section}"] = optax.tree.norm(d_grads.get(section, {}))
        d_terms["gnorm_d"] = optax.tree.norm(d_grads)
        for name in ("grad_mpd", "grad_msd", "grad_mstftd"):
            d_terms[name] = _probe(d_grads, name)
        return d_terms, {"wav_hat": wav_hat, "d_spectral": spectral, "step_d_params": d_params}

    def g_terms_of(d_params, spectral, target, lengths, wav_hat, q_loss, g_vjp):
        sp = train_step.g_phase_spectral(d_params, spectral, per_call=per_call)
        g_parts, _, g_grads = train_step.generator_gradients(
            units, d_params, sp, target, wav_hat, lengths, q_loss, g_vjp, config
        )
        return _g_terms(g_parts, g_grads), sp[1]

    def d_phase(state, wav):
        target, _, wav_hat, _, _ = forward(state, wav)
        return d_terms_of(state, target, wav_hat)

    def g_phase(state, wav, d_params, spectral):
        target, lengths, wav_hat, q_loss, g_vjp = forward(state, wav)
        terms, fake_spectral = g_terms_of(
            d_params, spectral, target, lengths, wav_hat, q_loss, g_vjp
        )
        return {**terms, "spectral": fake_spectral}

    def probe(state: train_step.TrainState, wav: jax.Array) -> dict[str, jax.Array]:
        target, lengths, wav_hat, q_loss, g_vjp = forward(state, wav)
        d_terms, out = d_terms_of(state, target, wav_hat)
        for prefix, dp in (("init", state.d_params), ("step", out["step_d_params"])):
            terms, out["step_spectral"] = g_terms_of(
                dp, out["d_spectral"], target, lengths, wav_hat, q_loss, g_vjp
            )
            out.update({f"{prefix}/{k}": v for k, v in {**d_terms, **terms}.items()})
        return out

    probe.d_phase = d_phase
    probe.g_phase = g_phase
    return probe


def scalar_terms(terms: dict) -> dict[str, float]:
    """The fixture's scalar names (``init/d_mpd``, ..., ``step/gnorm_g``) as Python floats."""
    return {k: float(np.asarray(terms[k])) for k in SCALAR_NAMES}


def reference_terms(
    g_ckpt: dict,
    do_ckpt: dict,
    wav: np.ndarray,
    config: ml_collections.ConfigDict,
    *,
    fresh_stft: bool = False,
) -> dict[str, np.ndarray]:
    """A reference ``g_`` + ``do_`` pair (as ``load_pth`` returns them) and a batch
    ``wav [B, T]`` -> every term of :func:`make_reference_probe` (numpy), through the importer
    a resumed run uses (:func:`~hificodec_jax.reference.training_import.import_reference_training`).

    Also holds ``wav_hat``, ``d_spectral`` and ``step_d_params`` / ``step_spectral`` (D after
    the step).
    """
    wav = np.asarray(wav, np.float32)
    if wav.ndim != 2:
        raise ValueError(f"audio batch must be float32 [B, L], got shape {wav.shape}")
    codec = factory.build_codec(config, weight_norm=True)
    discs = factory.build_discriminators(config)
    tx_d, _ = optim.make_optimizer(config.optim.d)
    ref = reference_import.import_reference_training(
        g_ckpt, do_ckpt, codec, discs, fresh_stft=fresh_stft
    )
    d_opt_state = reference_import.adam_state_from_torch(tx_d.init(ref.d_params), *ref.d_adam)
    state = train_step.TrainState(
        step=jnp.asarray(ref.step, jnp.int32),
        g_params=ref.g_params,
        d_params=ref.d_params,
        g_opt_state=None,  # the probe takes no G step: no copy of G's Adam moments
        d_opt_state=d_opt_state,
        vq={},
        spectral=ref.spectral,
        rng=jax.random.key_data(jax.random.key(config.seed)),
        skipped=jnp.zeros((2,), jnp.int32),
    )
    # Full size, the state's host copies, G's imported Adam moments and the compiler's freed
    # memory would otherwise add to the probe's own buffers (GiBs).
    state = jax.device_put(state)
    del ref, g_ckpt, do_ckpt
    probe = make_reference_probe(codec, discs, tx_d, config)
    # The phases one program each, G's compiled once for both of its calls: the full-size
    # probe's peak is then one phase's buffers and compile, not all three at once.
    d_terms, out = jax.tree.map(np.asarray, _run_alone(probe.d_phase, state, wav))
    g_phase = jax.jit(probe.g_phase).lower(state, wav, state.d_params, state.spectral).compile()
    host_memory.release_freed_memory()
    for prefix, dp in (("init", state.d_params), ("step", out["step_d_params"])):
        g_terms = jax.tree.map(np.asarray, g_phase(state, wav, dp, out["d_spectral"]))
        out["step_spectral"] = g_terms.pop("spectral")  # the step's ("step" comes last)
        out.update({f"{prefix}/{k}": v for k, v in {**d_terms, **g_terms}.items()})
    return out


def _run_alone(fn, *args):
    """``fn(*args)`` compiled, run and its compiled program dropped, with the compiler's freed
    memory handed back."""
    compiled = jax.jit(fn).lower(*args).compile()
    host_memory.release_freed_memory()
    out = compiled(*args)
    del compiled
    jax.clear_caches()
    host_memory.release_freed_memory()
    return out
