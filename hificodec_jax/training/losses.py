"""Training losses of HiFi-Codec (AcademiCodec) as pure, jit-able, differentiable functions.

Reference: ``academicodec/models/hificodec/models.py`` (``discriminator_loss``,
``generator_loss``, ``feature_loss``) and ``train.py`` (mel losses, loss sum); see spec
section 6.  The reference trains with LSGAN losses, un-normalised feature matching and a
three-resolution L1 log-mel loss; the paper's hinge losses (Eqs. 1-2) and normalised
feature matching (Eq. 3) are provided as alternatives.

Conventions: each ``*_logits`` argument is a list with one array per sub-discriminator
(any shape); each ``*_fmaps`` argument is a list (sub-discriminators) of lists (layers) of
arrays.  Every "mean" is over all elements of one array.  Waveforms are ``[B, T]`` (a
trailing channel axis of size 1, ``[B, T, 1]``, is accepted and squeezed).  L1 terms use the
subgradient ``sign(0) = 0`` of torch, so identical inputs give exactly zero gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hificodec_jax.audio.spectral import mel_spectrogram

__all__ = [
    "feature_matching_loss",
    "feature_matching_terms",
    "finish_feature_matching",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "multi_resolution_mel_loss",
    "reference_mel_resolutions",
    "time_l1_loss",
]

MelResolution = tuple[int, int, int, float]  # (n_fft, hop, win, weight)


def _abs(x: jax.Array) -> jax.Array:
    """``|x|`` with derivative ``sign(x)`` (0 at 0), like torch's ``abs``/``l1_loss`` backward.

    ``jnp.abs`` differentiates to 1 at exactly 0, so identical inputs would get a non-zero
    gradient; ``x * sign(x)`` has the same value and the torch subgradient.
    """
    return x * jnp.sign(x)


def _check_pairs(a: Sequence, b: Sequence, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} real vs {len(b)} fake entries")


def lsgan_discriminator_loss(
    real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]
) -> jax.Array:
    """LSGAN discriminator loss ``sum_k [ mean((1 - D_k(y))^2) + mean(D_k(y_hat)^2) ]``.

    Reference ``models.discriminator_loss`` (HiFi-GAN form), summed with weight 1 over all
    sub-discriminators.  Callers pass ``fake_logits`` computed on
    ``jax.lax.stop_gradient(y_hat)`` (the reference uses ``y_g_hat.detach()``).
    """
    _check_pairs(real_logits, fake_logits, "lsgan_discriminator_loss")
    loss = jnp.zeros((), jnp.float32)
    for dr, df in zip(real_logits, fake_logits, strict=True):
        loss = loss + jnp.mean(jnp.square(1.0 - dr)) + jnp.mean(jnp.square(df))
    return loss


def lsgan_generator_loss(fake_logits: Sequence[jax.Array]) -> jax.Array:
    """LSGAN generator loss ``sum_k mean((1 - D_k(y_hat))^2)`` (reference ``generator_loss``)."""
    loss = jnp.zeros((), jnp.float32)
    for df in fake_logits:
        loss = loss + jnp.mean(jnp.square(1.0 - df))
    return loss


def hinge_discriminator_loss(
    real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]
) -> jax.Array:
    """Hinge discriminator loss (paper Eq. 2), summed over sub-discriminators.

    ``sum_k [ mean(relu(1 - D_k(y))) + mean(relu(1 + D_k(y_hat))) ]``: a plain sum over
    the K sub-discriminators (the paper writes ``1/K sum_k``; we sum, like the reference's
    LSGAN losses, so both families have the same scale convention).  Not used by the
    reference training code.
    """
    _check_pairs(real_logits, fake_logits, "hinge_discriminator_loss")
    loss = jnp.zeros((), jnp.float32)
    for dr, df in zip(real_logits, fake_logits, strict=True):
        loss = loss + jnp.mean(jax.nn.relu(1.0 - dr)) + jnp.mean(jax.nn.relu(1.0 + df))
    return loss


def hinge_generator_loss(fake_logits: Sequence[jax.Array]) -> jax.Array:
    """Hinge generator loss (paper Eq. 1): ``sum_k mean(relu(1 - D_k(y_hat)))``.

    The relu form (as in Encodec / the HiFi-Codec paper), not the unbounded
    ``-mean(D(y_hat))`` variant; plain sum over sub-discriminators (see
    ``hinge_discriminator_loss``).  Not used by the reference training code.
    """
    loss = jnp.zeros((), jnp.float32)
    for df in fake_logits:
        loss = loss + jnp.mean(jax.nn.relu(1.0 - df))
    return loss


def feature_matching_loss(
    real_fmaps: Sequence[Sequence[jax.Array]],
    fake_fmaps: Sequence[Sequence[jax.Array]],
    *,
    normalized: bool = False,
    stop_gradient_real: bool = False,
    eps: float = 1e-8,
) -> jax.Array:
    """Feature-matching loss between discriminator feature maps of ``y`` and ``y_hat``.

    * ``normalized=False`` (reference ``models.feature_loss``, used for MPD, MSD and
      MS-STFT in ``train.py``): ``2 * sum_k sum_l mean|f_kl(y) - f_kl(y_hat)|``.
    * ``normalized=True`` (paper Eq. 3, Encodec form):
      ``1/(sum_k L_k) * sum_k sum_l mean|f_kl(y) - f_kl(y_hat)| / max(mean|f_kl(y)|, eps)``,
      i.e. the mean over all (sub-discriminator, layer) pairs of the relative L1 error;
      no factor 2.

    Real features are not stop-gradiented by default (as in the reference, where the leak
    only reaches D's gradients, which are zeroed before the D step); set
    ``stop_gradient_real=True`` to detach them (the denominator included).
    """
    total, count = feature_matching_terms(
        real_fmaps,
        fake_fmaps,
        normalized=normalized,
        stop_gradient_real=stop_gradient_real,
        eps=eps,
    )
    return finish_feature_matching(total, count, normalized=normalized)


def feature_matching_terms(
    real_fmaps: Sequence[Sequence[jax.Array]],
    fake_fmaps: Sequence[Sequence[jax.Array]],
    *,
    normalized: bool = False,
    stop_gradient_real: bool = False,
    eps: float = 1e-8,
) -> tuple[jax.Array, int]:
    """``(sum of the per-layer terms, number of layers)`` of :func:`feature_matching_loss`.

    Sums over several calls (one sub-discriminator at a time) add up; pass the totals to
    :func:`finish_feature_matching` to get the loss of all of them together.
    """
    _check_pairs(real_fmaps, fake_fmaps, "feature_matching_loss")
    total = jnp.zeros((), jnp.float32)
    count = 0
    for fr_k, ff_k in zip(real_fmaps, fake_fmaps, strict=True):
        _check_pairs(fr_k, ff_k, "feature_matching_loss layers")
        for fr, ff in zip(fr_k, ff_k, strict=True):
            if stop_gradient_real:
                fr = jax.lax.stop_gradient(fr)
            term = jnp.mean(_abs(fr - ff))
            if normalized:
                term = term / jnp.maximum(jnp.mean(_abs(fr)), eps)
            total = total + term
            count += 1
    return total, count


def finish_feature_matching(total: jax.Array, count: int, *, normalized: bool) -> jax.Array:
    """The loss from :func:`feature_matching_terms`' sums: ``total / count`` or ``2 * total``."""
    if normalized:
        return total / max(count, 1)
    return 2.0 * total


def reference_mel_resolutions(sample_rate: int) -> tuple[MelResolution, ...]:
    """The reference's three mel-loss terms ``(n_fft, hop, win, weight)`` (``train.py``).

    ``(1024, hop_size, win_size, 45)`` with the config's ``hop_size/win_size`` (200/800 at
    16 kHz, 240/1024 at 24 kHz), plus ``(512, 120, 512, 1)`` and ``(256, 60, 256, 1)``,
    whose hops are hard-coded (not scaled with the sample rate).  The reference also
    computes a ``(128, 30, 128)`` mel that is never added to the loss; it is omitted.
    """
    if sample_rate == 16000:
        main = (1024, 200, 800, 45.0)
    elif sample_rate == 24000:
        main = (1024, 240, 1024, 45.0)
    else:
        raise ValueError(f"no reference mel-loss config for sample_rate={sample_rate}")
    return (main, (512, 120, 512, 1.0), (256, 60, 256, 1.0))


def _as_bt(wav: jax.Array) -> jax.Array:
    if wav.ndim == 3 and wav.shape[-1] == 1:
        wav = wav[..., 0]
    if wav.ndim != 2:
        raise ValueError(f"expected waveform [B, T] or [B, T, 1], got shape {wav.shape}")
    return wav


def _masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``x``; with ``mask`` (broadcastable to ``x``), sum(mask*x)/sum(mask) (0 if empty)."""
    if mask is None:
        return jnp.mean(x)
    m = jnp.broadcast_to(mask.astype(x.dtype), x.shape)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def multi_resolution_mel_loss(
    wav: jax.Array,
    wav_hat: jax.Array,
    *,
    sample_rate: int,
    resolutions: Sequence[MelResolution],
    num_mels: int = 80,
    fmin: float = 0.0,
    fmax: float | None = None,
    lengths: jax.Array | None = None,
    spectrogram=mel_spectrogram,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of L1 distances between reference log-mels of ``wav`` and ``wav_hat``.

    ``total = sum_r weight_r * mean|M_r(wav) - M_r(wav_hat)|`` with ``M_r`` =
    ``spectral.mel_spectrogram`` at ``(n_fft_r, hop_r, win_r)`` (reference ``train.py``:
    ``loss_mel = 45*L1(mel1024) + L1(mel512) + L1(mel256)`` with
    ``resolutions=reference_mel_resolutions(sr)``).  Returns ``(total, terms)``, where
    ``terms["mel{n_fft}_hop{hop}"]`` is the *unweighted* L1 of each resolution.

    ``lengths`` (optional, ``[B]`` valid samples per item): the L1 mean is taken only over
    frames ``t`` with ``t * hop < length``, i.e. the first ``ceil(length / hop)`` frames (frames
    whose left edge, in unpadded coordinates, starts inside the signal).  The padding itself
    still enters the last valid frames; the reference has no masking (``None``).
    ``spectrogram``: ``mel_spectrogram`` or a wrapper of it (e.g. run per device).
    """
    wav, wav_hat = _as_bt(wav), _as_bt(wav_hat)
    if wav.shape != wav_hat.shape:
        raise ValueError(f"shape mismatch {wav.shape} vs {wav_hat.shape}")
    total = jnp.zeros((), jnp.float32)
    terms: dict[str, jax.Array] = {}
    for n_fft, hop, win, weight in resolutions:
        kw = dict(
            sample_rate=sample_rate,
            n_fft=n_fft,
            num_mels=num_mels,
            hop_size=hop,
            win_size=win,
            fmin=fmin,
            fmax=fmax,
        )
        diff = _abs(spectrogram(wav, **kw) - spectrogram(wav_hat, **kw))
        mask = None
        if lengths is not None:
            frames = jnp.arange(diff.shape[1])
            mask = (frames[None, :] * hop < jnp.asarray(lengths)[:, None])[..., None]
        term = _masked_mean(diff, mask)
        name = f"mel{n_fft}_hop{hop}"
        if name in terms:
            name = f"{name}_win{win}"
        terms[name] = term
        total = total + weight * term
    return total, terms


def time_l1_loss(wav: jax.Array, wav_hat: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Waveform L1 ``mean|wav - wav_hat|`` (not part of the reference's generator loss).

    ``mask`` (optional, broadcastable to ``[B, T]``, e.g. ``arange(T) < lengths[:, None]``)
    restricts the mean to valid samples: ``sum(mask * |d|) / max(sum(mask), 1)``.
    """
    wav, wav_hat = _as_bt(wav), _as_bt(wav_hat)
    if wav.shape != wav_hat.shape:
        raise ValueError(f"shape mismatch {wav.shape} vs {wav_hat.shape}")
    return _masked_mean(_abs(wav - wav_hat), mask)
