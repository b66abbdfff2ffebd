"""Training input from a directory of audio files, as grain pipelines.

``AudioFileSource`` decodes one file per index (soundfile; librosa for what libsndfile cannot
read), mixes to mono and resamples to the model rate. ``make_train_dataset`` shards the files
per process, shuffles and repeats them, takes a random ``segment_size`` crop of each (zero
padded if shorter, with the valid length kept for the masks), drops bad files and batches.
A file that cannot be decoded, is silent or has non-finite samples is skipped, counted and
logged once by name; training goes on. The iterator's state (``get_state``/``set_state``) is
saved with each checkpoint, so a resumed run continues on exactly the next batch.
"""

from __future__ import annotations

import collections
import os
import threading
import zlib

import grain
import numpy as np
from absl import logging

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
SILENCE_PEAK = 1e-4  # a file whose peak stays below this is treated as silent

_bad = collections.OrderedDict()  # path -> reason, shared by every pipeline in this process
_bad_lock = threading.Lock()


def list_audio_files(directory: str) -> list[str]:
    """Every audio file under ``directory`` (recursive, sorted)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"data directory {directory!r} does not exist")
    files = [
        os.path.join(root, n)
        for root, _, names in os.walk(directory)
        for n in names
        if n.lower().endswith(AUDIO_EXTENSIONS)
    ]
    if not files:
        raise FileNotFoundError(
            f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {directory!r}"
        )
    return sorted(files)


def split_files(files: list[str], held_out_fraction: float = 0.02) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split by a hash of each file name (at least one held out)."""
    held = [
        f
        for f in files
        if zlib.crc32(os.path.basename(f).encode()) % 1000 < held_out_fraction * 1000
    ]
    if not held:
        held = files[-1:]
    train = [f for f in files if f not in set(held)] or files
    return train, held


def _record_bad(path: str, reason: str) -> None:
    with _bad_lock:
        if path not in _bad:
            _bad[path] = reason
            logging.warning("skipping audio file %s: %s", path, reason)


def bad_file_stats() -> dict[str, str]:
    """Files skipped so far in this process, with the reason."""
    with _bad_lock:
        return dict(_bad)


def bad_file_metrics() -> dict[str, float]:
    return {"data/bad_files": float(len(_bad))}


def decode_audio(path: str, sample_rate: int) -> np.ndarray:
    """Mono float32 ``[T]`` at ``sample_rate``; raises ValueError for unusable audio."""
    import librosa  # noqa: PLC0415
    import soundfile as sf  # noqa: PLC0415

    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
    except Exception:  # noqa: BLE001 (fall back to librosa/audioread, e.g. for mp3)
        try:
            wav, sr = librosa.load(path, sr=None, mono=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot decode ({type(e).__name__}: {e})") from None
    if wav.size == 0:
        raise ValueError("empty")
    if not np.all(np.isfinite(wav)):
        raise ValueError("non-finite samples")
    if np.max(np.abs(wav)) < SILENCE_PEAK:
        raise ValueError("silent")
    if sr != sample_rate:
        wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


class AudioFileSource:
    """grain random-access source: ``[i] -> {"wav": float32 [T] or None, "path": str}``."""

    def __init__(self, files: list[str], sample_rate: int):
        self.files, self.sample_rate = list(files), sample_rate

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            return {"wav": decode_audio(path, self.sample_rate), "path": path}
        except ValueError as e:
            _record_bad(path, str(e))
            return {"wav": None, "path": path}


def _crop(item: dict, rng: np.random.Generator, segment_size: int) -> dict:
    wav = item["wav"]
    if wav is None:
        return item
    out = np.zeros((segment_size,), np.float32)
    if len(wav) >= segment_size:
        start = int(rng.integers(0, len(wav) - segment_size + 1))
        out[:] = wav[start : start + segment_size]
        length = segment_size
    else:
        out[: len(wav)] = wav
        length = len(wav)
    return {"wav": out, "lengths": np.int32(length)}


def make_train_dataset(
    source,
    *,
    segment_size: int,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    min_length: int = 1,
):
    """Infinite shuffled batches ``{"wav": [b, segment_size], "lengths": [b]}`` of this process."""
    import jax  # noqa: PLC0415

    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(source)[pi::pc]  # per-process shard of the files
    ds = ds.seed(seed).shuffle().repeat()
    ds = ds.random_map(lambda item, rng: _crop(item, rng, segment_size))
    it = ds.to_iter_dataset()
    it = it.filter(lambda item: item["wav"] is not None and item["lengths"] >= min_length)
    return it.batch(batch_size, drop_remainder=True)


def make_eval_dataset(source, *, max_seconds: float, hop: int, batch_size: int = 1):
    """Held-out clips cut to ``max_seconds`` (zero padded to one shape), with their lengths."""
    size = int(max_seconds * source.sample_rate) // hop * hop
    for i in range(len(source)):
        wav = source[i]["wav"]
        if wav is None or len(wav) < hop:
            continue
        clip = np.zeros((batch_size, size), np.float32)
        n = min(len(wav), size)
        clip[0, :n] = wav[:n]
        yield {"wav": clip, "lengths": np.array([n] + [hop] * (batch_size - 1), np.int32)}
