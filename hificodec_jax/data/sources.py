"""Where training audio comes from: the trainer's train / held-out sources.

:func:`make_sources` picks the training data from ``config.data`` (ArrayRecord data prepared
by :mod:`hificodec_jax.data.corpora`, a directory tree of audio files, or the built-in demo
corpus). grain and TFDS are imported only when training sources are made.
"""

from __future__ import annotations

import os

import ml_collections
from absl import logging

from hificodec_jax.audio.audio_io import list_audio_files

__all__ = ["make_sources", "steps_per_epoch"]


def make_sources(config: ml_collections.ConfigDict, workdir: str):
    """(train source, held-out source) from ``config.data``; the demo corpus when unset.

    Each source has ``len()`` (its number of clips: one per audio file or record) and
    ``source[i]`` (a mono float32 waveform at ``config.audio.sample_rate``).
    """
    from hificodec_jax.data import input_pipeline  # grain / TFDS only when training

    sr = config.audio.sample_rate
    if config.data.tfds_dir:
        return (
            input_pipeline.ArrayRecordAudioSource(config.data.tfds_dir, "train", sr),
            input_pipeline.ArrayRecordAudioSource(config.data.tfds_dir, "validation", sr),
        )
    directory = config.data.dir
    if not directory:
        from hificodec_jax.data.demo_corpus import ensure_demo_corpus

        directory = ensure_demo_corpus(os.path.join(workdir, "demo_corpus"), sr)
        logging.info("no dataset configured: training on the built-in demo corpus %s", directory)
    train_files, eval_files = input_pipeline.split_files(list_audio_files(directory))
    return (
        input_pipeline.AudioFileSource(train_files, sr),
        input_pipeline.AudioFileSource(eval_files, sr),
    )


def steps_per_epoch(num_clips: int, global_batch: int) -> int:
    """Optimizer steps in one pass over ``num_clips`` training clips (at least 1).

    The reference's dataset yields one random crop per file and its loader drops the last
    partial batch, so an epoch is ``num_clips // global_batch`` steps.
    """
    if global_batch <= 0:
        raise ValueError(f"batch_size must be positive, got {global_batch}")
    return max(1, int(num_clips) // int(global_batch))
