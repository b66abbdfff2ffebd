"""grain input pipelines: training crops and held-out clips from audio files or ArrayRecord data.

Training (:func:`make_train_dataset`), per process::

    MapDataset.source(source)[process_index::process_count]   # disjoint shard of the items
      .seed(seed).shuffle().repeat()                           # reshuffled every epoch
      .random_map(decode, check, random crop / zero pad)       # bad item -> sentinel, logged
      .filter(valid) -> to_iter_dataset() -> .batch(drop_remainder=True)

as in the reference (``librosa.load`` at the model's rate, a random ``segment_size`` crop, zero
padding when shorter, no gain normalisation). A bad item (undecodable, silent, non-finite,
too short) never stops training: it is logged once by name, counted in the dataset's
:class:`BadItems` ledger (``bad_items=``) and skipped. Batches are ``{"wav": float32 [b, segment_size], "lengths": int32 [b]}`` (valid
samples before padding). The pipeline is deterministic given ``seed`` and the returned
``IterDataset``'s iterator is checkpointable (``get_state()`` / ``set_state()``; the grain
orbax handler), so a resumed run continues on the exact next batch.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Iterable, Sequence

import grain
import numpy as np
from absl import logging

from hificodec_jax.audio import audio_io
from hificodec_jax.audio.audio_io import list_audio_files

__all__ = [
    "ArrayRecordAudioSource",
    "AudioFileSource",
    "BadItems",
    "list_audio_files",
    "make_eval_dataset",
    "make_train_dataset",
    "split_files",
]

# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def split_files(
    files: Sequence[str], held_out_fraction: float = 0.02, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: a deterministic split by stable hashing of ``parent/name``.

    A file's side depends only on its own key, so adding files never moves others; at least
    one file is held out (and one kept) when there are two or more.
    """
    keys = [audio_io.file_key(f) for f in files]
    held = audio_io.held_out_groups(keys, held_out_fraction, seed)
    train = [f for f, k in zip(files, keys, strict=True) if k not in held]
    return train, [f for f, k in zip(files, keys, strict=True) if k in held]


class AudioFileSource:
    """Random access to audio files: ``source[i]`` is float32 mono ``[T]`` at ``sample_rate``.

    ``paths``: a directory (searched recursively for wav/flac/mp3/ogg/...), a file, or a list of
    either. Decoding errors propagate from ``__getitem__``; the pipelines catch them.
    """

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike], sample_rate: int):
        self.paths = list_audio_files(paths)
        self.sample_rate = int(sample_rate)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return audio_io.load_audio(self.paths[index], self.sample_rate)

    def name(self, index: int) -> str:
        return self.paths[index]

    def __repr__(self) -> str:
        return f"AudioFileSource({len(self)} files, sample_rate={self.sample_rate})"


def find_tfds_data_dir(directory: str) -> str:
    """The directory holding ``dataset_info.json`` at or below ``directory`` (newest version).

    Local paths and ``gs://`` URLs alike (etils.epath; GCS needs the ``[gcs]`` extra).
    """
    from etils import epath

    root = epath.Path(os.fspath(directory))
    if (root / "dataset_info.json").exists():
        return os.fspath(root)
    found = []

    def walk(d, depth):
        for child in sorted(d.iterdir()):
            if depth > 5 or child.name.startswith(("incomplete", ".")) or not child.is_dir():
                continue
            if (child / "dataset_info.json").exists():
                found.append(child)
            walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    if not found:
        raise FileNotFoundError(
            f"no prepared TFDS data (dataset_info.json) under {directory}: prepare it with "
            "`python -m hificodec_jax.data.corpora --kind ... --root ... --out ...`"
        )
    parents = {os.fspath(d.parent) for d in found}
    if len(parents) > 1:
        raise ValueError(f"several datasets under {directory}, pass one of: {sorted(parents)}")
    newest = max(found, key=lambda d: [int(x) if x.isdigit() else -1 for x in d.name.split(".")])
    return os.fspath(newest)


class ArrayRecordAudioSource:
    """One split of ArrayRecord data prepared by :mod:`hificodec_jax.data.corpora` (or any TFDS
    dataset with an int16 ``audio`` Tensor feature): ``source[i]`` is float32 ``[T]``.

    ``data_dir`` is the version directory ``prepare_corpus`` returns or any directory above it.
    When ``sample_rate`` differs from the stored rate, clips are resampled on reading.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str = "train", sample_rate=None):
        import tensorflow_datasets as tfds  # slow import, only when used

        self.data_dir = find_tfds_data_dir(os.fspath(data_dir))
        builder = tfds.builder_from_directory(self.data_dir)
        self.split = split
        self.stored_rate = int((builder.info.metadata or {}).get("sample_rate", 0)) or None
        self.sample_rate = int(sample_rate or self.stored_rate or 0) or None
        if self.sample_rate is None:
            raise ValueError(f"{self.data_dir} records no sample_rate: pass sample_rate=")
        if self.stored_rate and self.stored_rate != self.sample_rate:
            logging.warning(
                "%s holds %d Hz audio: resampling to %d Hz on the fly",
                self.data_dir,
                self.stored_rate,
                self.sample_rate,
            )
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def record(self, index: int) -> dict:
        """The stored example: ``audio`` int16, ``id``, ``speaker_id`` (str), ``duration``."""
        rec = dict(self._source[index])
        for key in ("id", "speaker_id"):
            if isinstance(rec.get(key), bytes):
                rec[key] = rec[key].decode("utf-8")
        return rec

    def __getitem__(self, index: int) -> np.ndarray:
        wav = audio_io.int16_to_float(self._source[index]["audio"])
        if self.stored_rate and self.stored_rate != self.sample_rate:
            wav = audio_io.resample(wav, self.stored_rate, self.sample_rate)
        return wav

    def name(self, index: int) -> str:
        try:
            return f"{self.split}/{self.record(index)['id']}"
        except Exception:  # the name of an unreadable record
            return f"{self.data_dir}:{self.split}[{index}]"

    def __repr__(self) -> str:
        return f"ArrayRecordAudioSource({self.data_dir!r}, {self.split!r}, {len(self)} clips)"


# ----------------------------------------------------------------------------------------------
# Bad items
# ----------------------------------------------------------------------------------------------


class BadItems:
    """The bad items one or more datasets met: name -> reason, each logged once.

    Thread-safe (grain's reader threads record into it); :meth:`metrics` feeds the metric
    writer.
    """

    def __init__(self):
        self._bad: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, name: str, reason: str) -> None:
        with self._lock:
            if name in self._bad:
                return
            self._bad[name] = reason
        logging.warning("skipping bad audio %s: %s", name, reason)

    def stats(self) -> dict[str, str]:
        """Every bad item met so far: name -> reason."""
        with self._lock:
            return dict(self._bad)

    def metrics(self) -> dict[str, float]:
        """Scalars for the metric writer (the number of distinct bad items skipped)."""
        with self._lock:
            return {"data/bad_files": float(len(self._bad))}


class _Guarded:
    """``source[i]`` -> ``(index, wav)`` or ``(index, reason)`` when decoding fails.

    Items found bad once are not decoded again (within this process). ``shard_size`` items
    all found bad raise instead of letting an infinite pipeline spin on nothing.
    """

    def __init__(self, source, bad_items: BadItems, shard_size: int | None = None):
        self.source = source
        self.bad_items = bad_items
        self.shard_size = shard_size
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        if index in self._bad:
            return index, None
        try:
            wav = np.asarray(self.source[index])
        except Exception as error:  # any failure is a bad item, not a crash
            return index, f"undecodable: {type(error).__name__}: {error}"
        return index, wav

    def check(self, item, min_samples: int) -> np.ndarray | None:
        """The waveform if usable, else ``None`` (logged and counted by name)."""
        index, wav = item
        if wav is None:
            return None
        reason = wav if isinstance(wav, str) else audio_io.audio_problem(wav, min_samples)
        if reason is None:
            return wav.astype(np.float32, copy=False)
        self._bad.add(index)
        name_fn = getattr(self.source, "name", None)
        self.bad_items.record(name_fn(index) if callable(name_fn) else f"item {index}", reason)
        if self.shard_size is not None and len(self._bad) >= self.shard_size:
            raise RuntimeError(f"all {self.shard_size} items of this shard are bad: {self.source}")
        return None


_SENTINEL: dict = {}  # a bad item; removed by .filter


def _is_valid(element: dict) -> bool:
    return bool(element)


# ----------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------


def random_crop(wav: np.ndarray, segment_size: int, rng: np.random.Generator) -> dict:
    """``{"wav": [segment_size], "lengths": valid samples}``: a random window, or zero padding."""
    n = wav.shape[0]
    if n >= segment_size:
        start = int(rng.integers(0, n - segment_size + 1))
        return {"wav": wav[start : start + segment_size].copy(), "lengths": np.int32(segment_size)}
    out = np.zeros(segment_size, np.float32)
    out[:n] = wav
    return {"wav": out, "lengths": np.int32(n)}


def _train_item(guarded, segment_size, min_samples, item, rng: np.random.Generator) -> dict:
    wav = guarded.check(item, min_samples)
    return _SENTINEL if wav is None else random_crop(wav, segment_size, rng)


def _eval_item(guarded, hop, max_samples, fixed_total, item) -> dict:
    wav = guarded.check(item, hop)
    if wav is None:
        return _SENTINEL
    wav = wav[:max_samples]
    total = fixed_total or math.ceil(wav.shape[0] / hop) * hop
    out = np.zeros((1, total), np.float32)
    out[0, : wav.shape[0]] = wav
    return {"wav": out, "lengths": np.array([wav.shape[0]], np.int32)}


def make_train_dataset(
    source,
    *,
    segment_size: int,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    min_samples: int | None = None,
    num_threads: int = 8,
    prefetch_buffer_size: int = 64,
    bad_items: BadItems | None = None,
) -> grain.IterDataset:
    """Infinite shuffled batches of random crops of this process's shard of ``source``.

    ``source``: any random-access source of float32 ``[T]`` clips (``AudioFileSource``,
    ``ArrayRecordAudioSource``, a list of arrays); ``batch_size`` is per process.
    ``process_index`` / ``process_count`` default to JAX's. Items shorter than ``min_samples``
    (default ``segment_size // 10``) count as bad; shorter clips above it are zero padded.
    ``num_threads`` / ``prefetch_buffer_size``: grain's read threads and read-ahead elements.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if len(source) == 0:
        raise ValueError(f"no training data: {source!r} is empty")
    if len(source) < process_count:
        raise ValueError(f"{len(source)} items cannot be shared by {process_count} processes")
    min_samples = segment_size // 10 if min_samples is None else min_samples
    audio_io.warm_up_soundfile()  # before grain's read threads decode (cffi's lazy types)
    shard = len(range(len(source))[process_index::process_count])
    guarded = _Guarded(source, bad_items or BadItems(), shard)
    crop = functools.partial(_train_item, guarded, segment_size, min_samples)  # picklable

    ds = grain.MapDataset.source(guarded)[process_index::process_count]
    ds = ds.seed(seed).shuffle().repeat().random_map(crop).filter(_is_valid)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return ds.to_iter_dataset(read).batch(batch_size, drop_remainder=True)


def make_eval_dataset(
    source,
    *,
    max_seconds: float,
    hop: int = 1,
    sample_rate: int | None = None,
    fixed_length: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
    bad_items: BadItems | None = None,
) -> grain.IterDataset:
    """Held-out clips one at a time, in order: ``{"wav": [1, T], "lengths": [1]}``.

    Each clip keeps its first ``max_seconds`` (``sample_rate`` defaults to
    ``source.sample_rate``). ``fixed_length`` pads every clip with zeros to the same ``T``
    (``max_seconds`` rounded up to a multiple of ``hop``) so a jitted evaluation compiles once;
    otherwise ``T`` is the clip's length rounded up to a multiple of ``hop``. ``lengths`` holds
    the valid samples. Bad clips (and clips shorter than one ``hop``) are skipped and counted
    as in training. Unsharded by default: every process sees every clip.
    """
    sample_rate = sample_rate or getattr(source, "sample_rate", None)
    if not sample_rate:
        raise ValueError("pass sample_rate= for a source without a sample_rate attribute")
    max_samples = max(int(round(max_seconds * sample_rate)), hop)
    padded_max = math.ceil(max_samples / hop) * hop
    audio_io.warm_up_soundfile()  # before grain's read threads decode (cffi's lazy types)
    guarded = _Guarded(source, bad_items or BadItems())

    prepare = functools.partial(
        _eval_item, guarded, hop, max_samples, padded_max if fixed_length else None
    )
    ds = grain.MapDataset.source(guarded)[process_index::process_count]
    ds = ds.map(prepare).filter(_is_valid)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return ds.to_iter_dataset(read)
