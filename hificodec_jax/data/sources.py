"""Where audio comes from: the trainer's train / held-out sources and the CLI's input files.

:func:`make_sources` picks the training data from ``config.data`` (ArrayRecord data prepared
by :mod:`hificodec_jax.data.corpora`, a directory tree of audio files, or the built-in demo
corpus); :func:`expand_audio_paths` turns paths a user typed (files,
directories, globs) into audio files, with the same extension list and directory walk
(:func:`hificodec_jax.audio.audio_io.list_audio_files`). grain and TFDS are imported only
when training sources are made, so the CLI's inference commands do not need them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

import ml_collections
from absl import logging

from hificodec_jax.audio.audio_io import AUDIO_EXTENSIONS, list_audio_files

__all__ = ["expand_audio_paths", "make_sources", "steps_per_epoch"]

_GLOB_CHARS = ("*", "?", "[")


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


def expand_audio_paths(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
) -> list[tuple[str, str]]:
    """``(file, relative name)`` for each file named by ``paths`` (files, directories, globs).

    A directory contributes its files with ``extensions`` (recursive, sorted, hidden entries
    skipped), each named relative to that directory (``a/x.wav``), so outputs can mirror the
    tree; a file or a glob match is named by its base name. A file given by name is taken
    whatever its extension. Raises ``FileNotFoundError`` naming the argument when a path does
    not exist, a glob matches nothing, or a directory holds no such files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[tuple[str, str]] = []
    for p in map(os.fspath, paths):
        if not os.path.exists(p) and any(c in p for c in _GLOB_CHARS):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no files match {p!r}")
            for m in matches:
                out.extend(_expand_one(m, extensions))
        else:
            out.extend(_expand_one(p, extensions))
    return out


def _expand_one(path: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    if not os.path.isdir(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file or directory: {path}")
        return [(os.path.abspath(path), os.path.basename(path))]
    root = os.path.abspath(path)
    files = list_audio_files(root, allow_empty=True, extensions=extensions)
    if not files:
        raise FileNotFoundError(f"no files ({', '.join(extensions)}) under {path}")
    return [(f, os.path.relpath(f, root)) for f in files]
