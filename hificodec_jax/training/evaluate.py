"""Held-out evaluation during training: mel distance and codebook usage of the generator.

:func:`make_eval_step` is the per-batch program (the codec, then the reference's mel1024 L1
over each clip's valid frames); :func:`evaluate` runs it over the held-out clips and writes the
scalars, one clip's audio and its mel images to TensorBoard.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from hificodec_jax.audio.spectral import mel_spectrogram
from hificodec_jax.models.quantizer import codebook_perplexity, stream_names
from hificodec_jax.training import losses, sharding
from hificodec_jax.training.checkpoint import EVAL_METRIC


def make_eval_step(codec, config: ml_collections.ConfigDict):
    """``(params, vq, wav [B, T], lengths) -> (mel L1 sum, frames, code counts, wav_hat, mel,
    mel_hat)``."""
    sr = config.audio.sample_rate
    n_fft, hop, win, _ = losses.reference_mel_resolutions(sr)[0]  # the reference's mel1024

    def mel(x):
        return mel_spectrogram(
            x, sample_rate=sr, n_fft=n_fft, num_mels=80, hop_size=hop, win_size=win
        )

    def step(params, vq, wav, lengths):
        out = codec.apply({"params": params, "vq": vq}, wav, lengths)
        target = wav[:, : out.wav_hat.shape[1]]
        m, m_hat = mel(target), mel(out.wav_hat)  # [B, frames, 80]
        valid = (jnp.arange(m.shape[1])[None, :] * hop < lengths[:, None]).astype(m.dtype)
        l1 = jnp.sum(jnp.mean(jnp.abs(m - m_hat), axis=-1) * valid)
        return l1, jnp.sum(valid), out.stats.counts, out.wav_hat, m, m_hat

    return step


def evaluate(
    eval_step,
    params,
    vq,
    eval_batches,
    writer,
    step: int,
    sample_rate: int,
    mesh,
    num_groups: int,
) -> dict:
    """Mel distance (reference mel1024 L1 over valid frames) and codebook usage on held-out data:
    ``eval/mel_distance``, ``eval/dead_codes`` and ``eval/perplexity_r{level}g{group}`` (named
    as the training step's ``vq/`` tags) for a quantizer of ``num_groups`` groups.

    Every process evaluates every clip; the batches enter as arrays replicated over ``mesh``.
    Returns the scalars written (``{}`` when there was no held-out clip).
    """
    l1_sum = frames = 0.0
    counts = None
    first = None
    for batch in eval_batches:
        batch = sharding.replicate_batch(batch, mesh)
        l1, n, c, wav_hat, m, m_hat = eval_step(params, vq, batch["wav"], batch["lengths"])
        l1_sum, frames = l1_sum + float(l1), frames + float(n)
        counts = np.asarray(c) if counts is None else counts + np.asarray(c)
        if first is None:
            first = tuple(np.asarray(x)[0] for x in (batch["wav"], wav_hat, m, m_hat))
    if counts is None:
        return {}
    ppl = codebook_perplexity(counts)
    metrics = {
        EVAL_METRIC: l1_sum / max(frames, 1.0),
        "eval/dead_codes": float((counts == 0).sum()),
    }
    names = stream_names(counts.shape[0], num_groups)
    metrics.update({f"eval/perplexity_{n}": float(v) for n, v in zip(names, ppl, strict=True)})
    writer.scalars(step, metrics)
    wav, wav_hat, m, m_hat = first
    writer.audio(step, "eval/reconstruction", wav_hat, sample_rate)
    writer.audio(step, "eval/original", wav, sample_rate)
    writer.mel_image(step, "eval/mel_reconstruction", np.asarray(m_hat))
    writer.mel_image(step, "eval/mel_original", np.asarray(m))
    return metrics
