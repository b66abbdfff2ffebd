"""Spectral front-ends (STFT, mel filterbank, log-mel) in pure ``jax.numpy``.

Arrays are batch-first and channels-last: waveforms are ``[B, T]``, spectrograms
``[B, frames, bins]``.  Everything here is jit-able and differentiable.

``mel_spectrogram`` reproduces the training-loss mel of the reference
(AcademiCodec ``meldataset.mel_spectrogram``, spec section 6):

1. reflect-pad ``int((n_fft - hop) / 2)`` samples on each side,
2. ``torch.stft(center=False)`` with a periodic Hann window of ``win_size`` samples,
   zero-padded (centred) to ``n_fft``,
3. magnitude ``sqrt(re^2 + im^2 + 1e-9)``,
4. librosa's default (Slaney scale, Slaney area norm) mel filterbank,
5. ``log(clip(., 1e-5))``.

Note the layout difference: the reference returns ``[B, mels, frames]``; this module
returns ``[B, frames, mels]``.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "frame_signal",
    "hann_window",
    "mel_filterbank",
    "mel_spectrogram",
    "stft",
]


def hann_window(
    win_length: int, periodic: bool = True, dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """Hann window of ``win_length`` samples, like ``torch.hann_window``.

    ``periodic=True`` (torch's default) is the first ``win_length`` samples of a
    symmetric window of length ``win_length + 1``:
    ``w[n] = 0.5 - 0.5 cos(2 pi n / N)`` with ``N = win_length`` (periodic) or
    ``N = win_length - 1`` (symmetric).  Computed in float64 numpy, then cast.
    """
    if win_length <= 0:
        raise ValueError(f"win_length must be positive, got {win_length}")
    if win_length == 1:
        return jnp.ones((1,), dtype=dtype)
    denom = win_length if periodic else win_length - 1
    n = np.arange(win_length, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / denom)
    return jnp.asarray(w, dtype=dtype)


def frame_signal(x: jax.Array, frame_length: int, hop: int) -> jax.Array:
    """Split ``x [B, T]`` into overlapping frames ``[B, n_frames, frame_length]``.

    ``n_frames = 1 + (T - frame_length) // hop`` (no padding, trailing samples dropped),
    which is ``torch.Tensor.unfold`` / ``torch.stft(center=False)`` framing.

    Implemented as one gather with a static ``[n_frames, frame_length]`` index table, which
    XLA CPU runs faster, forward and backward, than ``ceil(frame_length / hop)`` shifted
    ``hop``-chunk slices concatenated (docs/performance-notes.md).
    """
    if x.ndim != 2:
        raise ValueError(f"expected [B, T] input, got shape {x.shape}")
    t = x.shape[1]
    if t < frame_length:
        raise ValueError(f"signal length {t} shorter than frame length {frame_length}")
    n_frames = 1 + (t - frame_length) // hop
    idx = np.arange(n_frames)[:, None] * hop + np.arange(frame_length)[None, :]
    return x[:, idx]


def stft(
    wav: jax.Array,
    n_fft: int,
    hop: int,
    win_length: int | None = None,
    *,
    window: jax.Array | None = None,
    center: bool = False,
    pad_mode: str = "reflect",
    normalized: bool = False,
) -> jax.Array:
    """Short-time Fourier transform of ``wav [B, T]`` -> complex ``[B, frames, n_fft // 2 + 1]``.

    Matches ``torch.stft(wav, n_fft, hop, win_length, window, center, pad_mode,
    normalized, onesided=True, return_complex=True)`` transposed to ``[B, frames, freq]``:

    * ``window`` defaults to a periodic Hann of ``win_length`` (default ``n_fft``); a window
      shorter than ``n_fft`` is zero-padded on both sides, left pad ``(n_fft - win) // 2``.
    * ``center=True`` pads ``n_fft // 2`` samples each side with ``pad_mode`` (any
      ``jnp.pad`` mode; torch's ``"reflect"`` does not repeat the edge sample, like numpy's).
    * frames: ``1 + (T_padded - n_fft) // hop``; ``normalized`` multiplies by ``n_fft**-0.5``.
    """
    if wav.ndim != 2:
        raise ValueError(f"expected [B, T] input, got shape {wav.shape}")
    win_length = n_fft if win_length is None else win_length
    if window is None:
        window = hann_window(win_length, periodic=True, dtype=wav.dtype)
    if window.shape != (win_length,):
        raise ValueError(f"window shape {window.shape} != ({win_length},)")
    if win_length > n_fft:
        raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
    left = (n_fft - win_length) // 2
    window = jnp.pad(window, (left, n_fft - win_length - left))
    if center:
        wav = jnp.pad(wav, ((0, 0), (n_fft // 2, n_fft // 2)), mode=pad_mode)
    frames = frame_signal(wav, n_fft, hop) * window.astype(wav.dtype)
    spec = jnp.fft.rfft(frames, n=n_fft, axis=-1)
    if normalized:
        spec = spec * (1.0 / math.sqrt(n_fft))
    return spec


@functools.lru_cache(maxsize=64)
def mel_filterbank(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """librosa mel filterbank, transposed to ``[n_fft // 2 + 1, n_mels]`` float32 (read-only).

    ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` with
    librosa's defaults (``htk=False`` Slaney mel scale, ``norm="slaney"`` area norm);
    ``fmax=None`` means ``sr / 2``.  librosa's "empty filters" warning (e.g. 80 mels on a
    256-point FFT at 16 kHz, as in the reference's small mel losses) is silenced: the
    reference uses those filters as they are.  Cached; the result must not be mutated.
    """
    import librosa  # local import: only needed when a filterbank is first built

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ee]mpty filters.*")
        fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    out = np.ascontiguousarray(fb.T, dtype=np.float32)
    out.setflags(write=False)
    return out


def mel_spectrogram(
    wav: jax.Array,
    *,
    sample_rate: int,
    n_fft: int,
    num_mels: int,
    hop_size: int,
    win_size: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    clip_val: float = 1e-5,
) -> jax.Array:
    """Reference log-mel spectrogram of ``wav [B, T]`` -> ``[B, frames, num_mels]``.

    ``frames = 1 + (T + 2 * int((n_fft - hop_size) / 2) - n_fft) // hop_size``.
    Steps (see module docstring): reflect pad ``int((n_fft - hop_size) / 2)`` per side,
    ``center=False`` STFT with periodic Hann(``win_size``) zero-padded to ``n_fft``,
    ``sqrt(re^2 + im^2 + 1e-9)``, librosa Slaney mel filterbank, ``log(max(., clip_val))``.
    The filterbank product runs at ``Precision.HIGHEST`` (no TF32 on GPU).
    """
    if wav.ndim != 2:
        raise ValueError(f"expected [B, T] input, got shape {wav.shape}")
    pad = int((n_fft - hop_size) / 2)
    wav = jnp.pad(wav, ((0, 0), (pad, pad)), mode="reflect")
    spec = stft(wav, n_fft, hop_size, win_size, center=False)
    mag = jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + 1e-9)
    fb = jnp.asarray(mel_filterbank(sample_rate, n_fft, num_mels, fmin, fmax), dtype=mag.dtype)
    mel = jnp.matmul(mag, fb, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, clip_val))
