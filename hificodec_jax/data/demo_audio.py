"""Deterministic speech-like test signals (no data files, no network).

A glottal-like harmonic source with a wandering pitch, shaped by two moving formant
resonances, with a syllable-rate envelope, short noise bursts and a little noise floor. Not
speech, but it exercises a codec the way voiced speech does.
"""

from __future__ import annotations

import numpy as np
import scipy.signal


def synthetic_speech(sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """``[T]`` float32 in [-0.9, 0.9], ``T = round(seconds * sample_rate)``."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 120.0 * (1.0 + 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    source = np.zeros(n)
    for h in range(1, int(sample_rate / 2 / 180)):
        source += np.sin(h * phase) / h
    out = np.zeros(n)
    block = sample_rate // 50  # formants move every 20 ms
    zi = [None, None]
    for start in range(0, n, block):
        seg = source[start : start + block]
        k = start / sample_rate
        y = np.zeros_like(seg)
        for i, (centre, depth) in enumerate(((600.0, 250.0), (1700.0, 500.0))):
            f = centre + depth * np.sin(2 * np.pi * (0.9 + 0.4 * i) * k)
            b, a = scipy.signal.iirpeak(f, 4.0, fs=sample_rate)
            if zi[i] is None:
                zi[i] = np.zeros(max(len(a), len(b)) - 1)
            yi, zi[i] = scipy.signal.lfilter(b, a, seg, zi=zi[i])
            y += yi
        out[start : start + block] = y
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    out *= envelope
    for centre in rng.uniform(0, max(seconds - 0.05, 0.0), size=max(1, int(seconds * 2))):
        i0 = int(centre * sample_rate)
        burst = rng.standard_normal(min(int(0.03 * sample_rate), n - i0))
        out[i0 : i0 + len(burst)] += 0.3 * burst * np.hanning(len(burst))
    out += 0.003 * rng.standard_normal(n)
    return (0.9 * out / max(np.abs(out).max(), 1e-9)).astype(np.float32)
