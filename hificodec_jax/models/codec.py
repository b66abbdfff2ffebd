"""The codec: encoder -> GRVQ -> decoder as one linen module.

Shape glossary (used across the package):
    B batch, T samples, F frames (= T // hop), D latent channels, G groups, R residual levels,
    L levels used (<= R; lower bitrate), K codebook size, C conv channels.
Layout is channels-last everywhere. Public tensors: ``wav [B, T]`` (or ``[T]``) float in
[-1, 1]; ``codes [B, F, L*G]`` int32 (level-major, then group); latents ``[B, F, D]``.

Usage::

    codec = hificodec_jax.build_codec(config)
    variables = codec.init(rng, wav)                         # {"params": ..., "vq": ...}
    out = codec.apply(variables, wav)                        # CodecOutput, full round trip
    codes = codec.apply(variables, wav, method="encode")     # [B, F, R*G]
    wav_hat = codec.apply(variables, codes, method="decode") # [B, F*hop]
"""

from __future__ import annotations

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hificodec_jax.models.quantizer import GroupResidualVQ


@flax.struct.dataclass
class CodecStats:
    """Codebook usage of one forward pass, per codebook stream (``L*G``, reference order)."""

    counts: jax.Array  # [L*G, K]
    perplexity: jax.Array  # [L*G]
    dead_codes: jax.Array  # [L*G] codes unused on this batch's valid frames
    commitment: jax.Array  # [L, G]
    codebook_loss: jax.Array  # [L, G]


@flax.struct.dataclass
class CodecOutput:
    """Everything a round trip produces. Batch axes follow the input (absent for ``[T]`` input)."""

    wav_hat: jax.Array  # [B, F*hop] reconstruction (zero beyond each clip's frames)
    codes: jax.Array  # [B, F, L*G] int32
    z: jax.Array  # [B, F, D] encoder latent
    z_q: jax.Array  # [B, F, D] straight-through quantized latent
    frame_mask: jax.Array  # [B, F] bool, True on frames inside each clip
    loss: jax.Array  # [] weighted quantizer loss (commitment, + codebook loss in "loss" mode)
    stats: CodecStats


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_wav(wav, hop: int, what: str = "wav"):
    """Validate a waveform batch; returns it as float ``[B, T]`` plus whether a batch was added.

    ``what`` names the array in the error messages. Finiteness is checked on concrete arrays
    only (under ``jit`` the values are not known).
    """
    if not hasattr(wav, "ndim"):
        wav = np.asarray(wav)
    if wav.ndim not in (1, 2):
        raise ValueError(f"{what} must be [T] or [B, T] (mono), got shape {tuple(wav.shape)}")
    if not jnp.issubdtype(wav.dtype, jnp.floating):
        raise ValueError(f"{what} must be a float array in [-1, 1], got dtype {wav.dtype}")
    if wav.shape[-1] < hop:
        raise ValueError(f"{what} has {wav.shape[-1]} samples, shorter than one hop ({hop})")
    if _is_concrete(wav) and (message := non_finite_message(wav, what)):
        raise ValueError(message)
    squeeze = wav.ndim == 1
    return (wav[None] if squeeze else wav), squeeze


def non_finite_message(wav, what: str = "wav") -> str | None:
    """None when every sample of ``wav`` (a concrete array) is finite, else an error message
    naming ``what``, how many samples are NaN or infinite and the first one's index."""
    wav = np.asarray(wav)
    bad = np.flatnonzero(~np.isfinite(wav).reshape(-1))
    if not bad.size:
        return None
    first = np.unravel_index(bad[0], wav.shape)
    index = tuple(int(i) for i in first) if wav.ndim > 1 else int(first[0])
    return f"{what} contains NaN or infinite samples ({bad.size}, the first at index {index})"


def check_codes(codes, quantizer: GroupResidualVQ):
    """Validate codes ``[B, F, L*G]`` (or ``[F, L*G]``) for ``quantizer``; returns int32
    ``[B, F, L*G]`` plus whether a batch was added. Values are checked on concrete arrays only."""
    if not hasattr(codes, "ndim"):
        codes = np.asarray(codes)
    if codes.ndim not in (2, 3):
        raise ValueError(f"codes must be [F, L*G] or [B, F, L*G], got shape {tuple(codes.shape)}")
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    quantizer.levels_of_streams(codes.shape[-1])
    k = quantizer.codebook_size
    if _is_concrete(codes) and codes.size:
        lo, hi = int(np.min(np.asarray(codes))), int(np.max(np.asarray(codes)))
        if lo < 0 or hi >= k:
            raise ValueError(f"codes must be in [0, {k}), got values in [{lo}, {hi}]")
    squeeze = codes.ndim == 2
    codes = codes.astype(jnp.int32)
    return (codes[None] if squeeze else codes), squeeze


def _sample_mask(frame_lengths: jax.Array, frames: int, hop: int) -> jax.Array:
    """``[B, frames * hop]`` bool, True on the samples of each item's first ``frame_lengths``."""
    return jnp.arange(frames * hop)[None, :] < (frame_lengths * hop)[:, None]


class Codec(nn.Module):
    """HiFi-Codec: ``wav [B, T] -> codes [B, F, L*G] -> wav_hat [B, F*hop]``.

    ``encoder(wav [B, T, 1], lengths) -> z [B, F, D]``, ``decoder(z_q [B, F, D], frame_lengths)
    -> [B, F*hop]``, each with a ``receptive_field()`` method; any pair with these signatures
    works (HiFi-GAN or SEANet family).
    """

    encoder: nn.Module
    quantizer: GroupResidualVQ
    decoder: nn.Module
    hop: int
    # Compute dtype of the encoder and decoder (convolutions, activations); parameters, the
    # quantizer (distances, EMA statistics) and the outputs stay float32.
    dtype: jnp.dtype = jnp.float32
    # The audio rate the codec was built for (``config.audio.sample_rate``); None for a codec
    # built from a bare model section.
    sample_rate: int | None = None

    @property
    def frame_rate(self) -> float:
        """Frames (code vectors) per second at :attr:`sample_rate`."""
        return self._rate(None) / self.hop

    def _rate(self, sample_rate: float | None) -> float:
        rate = self.sample_rate if sample_rate is None else sample_rate
        if rate is None:
            raise ValueError("this codec has no sample_rate: pass sample_rate=")
        return rate

    def bitrate(self, sample_rate: float | None = None, num_levels: int | None = None) -> float:
        """Nominal bits per second (at :attr:`sample_rate` unless given): frames/s x codebooks
        used x log2(K)."""
        return self._rate(sample_rate) / self.hop * self.quantizer.bits_per_frame(num_levels)

    def receptive_field(self) -> tuple[int | None, int | None]:
        """One-sided receptive field of ``(encoder, decoder)`` in frames, rounded up, or None.

        How many frames to either side of a frame can change its latent (encoder; convolutions
        only, the GroupNorm statistics are global) or its samples (decoder), from the modules'
        ``receptive_field()`` (encoder: in samples; decoder: in frames). None for an unbounded
        receptive field (the SEANet family's LSTM).
        """
        enc, dec = self.encoder.receptive_field(), self.decoder.receptive_field()
        enc = None if enc is None else math.ceil(enc / self.hop) + 1
        dec = None if dec is None else math.ceil(dec) + 1
        return enc, dec

    def _frames(self, wav, lengths):
        b, t = wav.shape
        f = t // self.hop
        if lengths is None:
            return None, jnp.ones((b, f), bool)
        lengths = jnp.asarray(lengths)
        if lengths.shape != (b,):
            raise ValueError(f"lengths must have shape ({b},), got {tuple(lengths.shape)}")
        if _is_concrete(lengths) and (
            np.any(np.asarray(lengths) < self.hop) or np.any(np.asarray(lengths) > t)
        ):
            raise ValueError(f"lengths must be in [{self.hop}, {t}] samples, got {lengths}")
        frames = lengths // self.hop
        return lengths, jnp.arange(f)[None, :] < frames[:, None]

    def __call__(
        self,
        wav: jax.Array,
        lengths: jax.Array | None = None,
        *,
        train: bool = False,
        num_levels: int | None = None,
    ) -> CodecOutput:
        """Full round trip. ``lengths [B]`` (samples) masks padded frames out of losses/stats."""
        wav, squeeze = check_wav(wav, self.hop)
        lengths, mask = self._frames(wav, lengths)
        z = self._encoder(wav, lengths)  # [B, F, D]
        q = self.quantizer(z, None if lengths is None else mask, train=train, num_levels=num_levels)
        frame_lengths = None if lengths is None else lengths // self.hop
        wav_hat = self._decoder(q.z_q, frame_lengths)  # [B, F*hop]
        if lengths is not None:
            wav_hat = wav_hat * jnp.repeat(mask, self.hop, axis=1).astype(wav_hat.dtype)
        stats = CodecStats(q.counts, q.perplexity, q.dead_codes, q.commitment, q.codebook_loss)
        out = CodecOutput(wav_hat, q.codes, z, q.z_q, mask, q.loss, stats)
        if squeeze:
            out = out.replace(
                wav_hat=out.wav_hat[0],
                codes=out.codes[0],
                z=out.z[0],
                z_q=out.z_q[0],
                frame_mask=out.frame_mask[0],
            )
        return out

    def encode(
        self, wav: jax.Array, lengths: jax.Array | None = None, *, num_levels: int | None = None
    ) -> jax.Array:
        """``wav [B, T]`` -> ``codes [B, F, L*G]`` int32 (no codebook update)."""
        wav, squeeze = check_wav(wav, self.hop)
        lengths, mask = self._frames(wav, lengths)
        z = self._encoder(wav, lengths)
        codes = self.quantizer(z, mask, num_levels=num_levels).codes
        return codes[0] if squeeze else codes

    def encode_latent(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """``wav [B, T]`` -> encoder latent ``z [B, F, D]`` (before quantization)."""
        wav, squeeze = check_wav(wav, self.hop)
        lengths, _ = self._frames(wav, lengths)
        z = self._encoder(wav, lengths)
        return z[0] if squeeze else z

    def quantize(self, z: jax.Array, *, num_levels: int | None = None):
        """``z [B, F, D]`` -> :class:`QuantizerOutput` (inference: no codebook update)."""
        return self.quantizer(z.astype(jnp.float32), num_levels=num_levels)

    def decode(self, codes: jax.Array, frame_lengths: jax.Array | None = None) -> jax.Array:
        """``codes [B, F, L*G]`` -> ``wav_hat [B, F*hop]``; fewer levels give lower bitrate.

        ``frame_lengths [B]`` (frames) decode a padded batch: each item decodes as it would
        alone, and its samples past ``frame_lengths * hop`` are zero.
        """
        codes, squeeze = check_codes(codes, self.quantizer)
        b, f = codes.shape[:2]
        if frame_lengths is not None:
            frame_lengths = jnp.asarray(frame_lengths)
            if frame_lengths.shape != (b,):
                raise ValueError(
                    f"frame_lengths must have shape ({b},), got {tuple(frame_lengths.shape)}"
                )
            if _is_concrete(frame_lengths) and (
                np.any(np.asarray(frame_lengths) < 1) or np.any(np.asarray(frame_lengths) > f)
            ):
                raise ValueError(f"frame_lengths must be in [1, {f}] frames, got {frame_lengths}")
        wav_hat = self._decoder(self.quantizer.decode_codes(codes), frame_lengths)
        if frame_lengths is not None:
            wav_hat = wav_hat * _sample_mask(frame_lengths, f, self.hop).astype(wav_hat.dtype)
        return wav_hat[0] if squeeze else wav_hat

    def decode_latent(self, z_q: jax.Array) -> jax.Array:
        """Decoder alone: ``z_q [B, F, D]`` -> ``wav_hat [B, F*hop]``."""
        return self._decoder(z_q, None)

    def _encoder(self, wav, lengths):
        """``wav [B, T]`` -> float32 ``z [B, F, D]``, computed in ``dtype``."""
        return self.encoder(wav[..., None].astype(self.dtype), lengths).astype(jnp.float32)

    def _decoder(self, z_q, frame_lengths):
        """``z_q [B, F, D]`` -> float32 ``wav_hat [B, F*hop]``, computed in ``dtype``."""
        return self.decoder(z_q.astype(self.dtype), frame_lengths).astype(jnp.float32)


class MissingEncoderError(ValueError):
    """Encoding was asked of a decoder-only model."""


class DecoderOnlyCodec(Codec):
    """A :class:`Codec` whose checkpoint had no encoder: ``decode``/``decode_latent``/
    ``quantize`` work; anything that needs the encoder raises :class:`MissingEncoderError`."""

    @classmethod
    def of(cls, codec: Codec) -> DecoderOnlyCodec:
        """The decoder-only form of ``codec`` (same submodules and fields)."""
        return cls(
            encoder=codec.encoder.clone(),
            quantizer=codec.quantizer.clone(),
            decoder=codec.decoder.clone(),
            hop=codec.hop,
            dtype=codec.dtype,
            sample_rate=codec.sample_rate,
        )

    def _no_encoder(self):
        raise MissingEncoderError(
            "this model has no encoder (it was converted from a decoder-only checkpoint): "
            "it can decode codes (method='decode') but cannot encode audio"
        )

    def __call__(self, wav, lengths=None, *, train=False, num_levels=None):
        self._no_encoder()

    def encode(self, wav, lengths=None, *, num_levels=None):
        self._no_encoder()

    def encode_latent(self, wav, lengths=None):
        self._no_encoder()
