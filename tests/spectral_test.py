"""Tests for ``hificodec_jax.audio.spectral``.

``tests/data/academicodec/cases.npz`` (the AcademiCodec fixture) holds ``wav_16k_320d``, whose
first row (``[1, 20877]``) went through the reference PyTorch ``mel_spectrogram`` to give ``mel1024_16k`` / ``mel512_16k`` / ``mel256_16k`` in the reference
layout ``[B, mels, frames]`` (parameters in ``MEL_CASES``; tolerance atol 1e-4 per the
fixture README).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from hificodec_jax.audio.spectral import (
    frame_signal,
    hann_window,
    mel_filterbank,
    mel_spectrogram,
    stft,
)

DATA = Path(__file__).parent / "data" / "academicodec" / "cases.npz"

# key -> (n_fft, hop, win); 80 mels, 16 kHz, fmin 0, fmax None
MEL_CASES = {
    "mel1024_16k": (1024, 200, 800),
    "mel512_16k": (512, 120, 512),
    "mel256_16k": (256, 60, 256),
}


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(DATA) as z:
        return {"wav": z["wav_16k_320d"][0:1], **{k: z[k] for k in z.files if k.startswith("mel")}}


def _hand_stft(x: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """float64 numpy STFT: explicit frame loop, periodic Hann zero-padded to n_fft."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    left = (n_fft - win) // 2
    wpad = np.zeros(n_fft)
    wpad[left : left + win] = w
    n_frames = 1 + (x.shape[-1] - n_fft) // hop
    frames = np.stack([x[:, i * hop : i * hop + n_fft] for i in range(n_frames)], axis=1)
    return np.fft.rfft(frames * wpad, axis=-1)


def test_hann_window():
    np.testing.assert_allclose(hann_window(4), [0.0, 0.5, 1.0, 0.5], atol=1e-7)
    np.testing.assert_allclose(hann_window(5, periodic=False), [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(hann_window(800), np.hanning(801)[:-1], atol=1e-7)


@pytest.mark.parametrize(
    "length,frame,hop", [(50, 16, 4), (50, 16, 5), (37, 8, 3), (40, 7, 1), (80, 40, 1)]
)
def test_frame_signal(length, frame, hop):
    x = np.arange(2 * length, dtype=np.float32).reshape(2, length)
    got = np.asarray(frame_signal(jnp.asarray(x), frame, hop))
    n = 1 + (length - frame) // hop
    want = np.stack([x[:, i * hop : i * hop + frame] for i in range(n)], axis=1)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n_fft,hop,win", [(64, 16, 64), (64, 10, 48), (32, 7, 31), (16, 2, 16)])
def test_stft_matches_numpy(n_fft, hop, win):
    x = np.random.default_rng(0).standard_normal((2, 300))
    got = np.asarray(stft(jnp.asarray(x, jnp.float32), n_fft, hop, win))
    want = _hand_stft(x, n_fft, hop, win)
    assert got.shape == (2, 1 + (300 - n_fft) // hop, n_fft // 2 + 1)
    assert np.iscomplexobj(got)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_stft_center_and_normalized():
    x = np.random.default_rng(1).standard_normal((1, 200))
    n_fft, hop = 32, 8
    got = np.asarray(stft(jnp.asarray(x, jnp.float32), n_fft, hop, center=True, normalized=True))
    xp = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    want = _hand_stft(xp, n_fft, hop, n_fft) / np.sqrt(n_fft)
    assert got.shape == (1, 1 + 200 // hop, n_fft // 2 + 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    got_c = np.asarray(
        stft(jnp.asarray(x, jnp.float32), n_fft, hop, center=True, pad_mode="constant")
    )
    want_c = _hand_stft(np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2))), n_fft, hop, n_fft)
    np.testing.assert_allclose(got_c, want_c, atol=1e-4)


@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmax",
    [(16000, 1024, 80, None), (24000, 256, 80, None), (16000, 512, 40, 8000.0)],
)
@pytest.mark.filterwarnings("ignore:Empty filters detected")
def test_mel_filterbank_equals_librosa(sr, n_fft, n_mels, fmax):
    fb = mel_filterbank(sr, n_fft, n_mels, 0.0, fmax)
    want = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=fmax).T
    assert fb.shape == (n_fft // 2 + 1, n_mels) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, want, rtol=1e-6, atol=0)
    assert mel_filterbank(sr, n_fft, n_mels, 0.0, fmax) is fb  # cached
    assert not fb.flags.writeable


@pytest.mark.parametrize("key", sorted(MEL_CASES))
def test_mel_spectrogram_matches_reference(fixture, key):
    n_fft, hop, win = MEL_CASES[key]
    fn = jax.jit(
        lambda w: mel_spectrogram(
            w, sample_rate=16000, n_fft=n_fft, num_mels=80, hop_size=hop, win_size=win
        )
    )
    got = np.asarray(fn(jnp.asarray(fixture["wav"])))
    want = fixture[key].transpose(0, 2, 1)  # reference layout [B, mels, frames]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_mel_spectrogram_gradient_finite():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 1000)) * 0.1, jnp.float32)
    x = x.at[1].set(0.0)  # silent item: magnitude eps and clamp must keep gradients finite

    def f(w):
        return jnp.mean(
            mel_spectrogram(w, sample_rate=16000, n_fft=256, num_mels=80, hop_size=60, win_size=256)
        )

    g = jax.jit(jax.grad(f))(x)
    assert g.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g[0]).sum()) > 0
