"""TensorBoard event files (via tensorboardX, no TensorFlow) and console progress.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging


def _viridis_like(x: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 (a small perceptual colour ramp)."""
    stops = np.array(
        [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32
    )
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


class MetricWriter:
    """Scalars, audio and mel images to ``logdir``; no-op on processes other than 0."""

    def __init__(self, logdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir, flush_secs=30)

    def scalars(self, step: int, values: dict) -> None:
        if self._writer:
            for k, v in values.items():
                self._writer.add_scalar(k, float(v), step)

    def audio(self, step: int, name: str, wav: np.ndarray, sample_rate: int) -> None:
        if self._writer:
            self._writer.add_audio(name, np.asarray(wav, np.float32), step, sample_rate=sample_rate)

    def mel_image(self, step: int, name: str, log_mel: np.ndarray) -> None:
        """``log_mel [frames, mels]`` shown with low frequencies at the bottom."""
        if self._writer:
            m = np.asarray(log_mel, np.float32).T[::-1]
            m = (m - m.min()) / max(float(m.max() - m.min()), 1e-6)
            self._writer.add_image(name, _viridis_like(m), step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()


class Progress:
    """Console line every call: step, steps/s, audio seconds per second, ETA."""

    def __init__(self, total_steps: int, audio_s_per_step: float, start_step: int = 0):
        self.total, self.audio_s = total_steps, audio_s_per_step
        self.last_step, self.last_time = start_step, time.perf_counter()

    def report(self, step: int, metrics: dict) -> dict:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        extra = {"perf/steps_per_s": rate, "perf/audio_s_per_s": rate * self.audio_s}
        shown = " ".join(
            f"{k.split('/', 1)[1]}={float(v):.4g}"
            for k, v in metrics.items()
            if k in ("loss/g_total", "loss/d_total", "loss/mel", "vq/dead_codes")
        )
        logging.info(
            "step %d/%d  %.2f steps/s  %.1f audio-s/s  ETA %s  %s",
            step,
            self.total,
            rate,
            rate * self.audio_s,
            time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 1e7 else "?",
            shown,
        )
        return extra
