"""Corpus inputs of the tokenize job, normalised to :class:`Record` lists, and their audio.

Sources (:func:`read_records`):

* a directory or a glob of audio files: keys are the paths relative to the directory (the
  glob's fixed leading directory) without the extension, ``spk1/utt3``;
* a JSONL manifest (``.jsonl``/``.json``): one object per line with ``path`` or
  ``audio_filepath`` (relative to the manifest's directory), optional ``start``/``end`` or
  NeMo's ``offset``/``duration`` (seconds), ``text``, ``speaker``, ``language``, ``key``/``id``;
  other fields pass through as ``extra``;
* a Kaldi data directory: ``wav.scp`` (plain paths; piped commands are refused), with
  ``segments``, ``text``, ``utt2spk`` when present;
* the ArrayRecord corpora that :mod:`hificodec_jax.data.corpora` writes (a directory holding
  ``dataset_info.json``): keys are the records' ``id``.

Keys must be unique (the error names the duplicates). Records are sorted by key.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import json
import os
import threading
from typing import Any

import numpy as np

from hificodec_jax.audio import audio_io

CORPUS_PREFIX = "arrayrecord:"  # Record.path of a corpus record: prefix + data dir + "#" + split


@dataclasses.dataclass
class Record:
    """One utterance to tokenize: its audio (a file, or a ``[start, end)`` segment of one, in
    seconds; ``end`` ``None`` is the file's end) and the fields the index keeps."""

    key: str
    path: str
    start: float | None = None
    end: float | None = None
    text: str | None = None
    speaker: str | None = None
    language: str | None = None
    duration: float | None = None  # seconds, for planning (None: not known yet)
    index: int | None = None  # record number in an ArrayRecord corpus
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {})}

    @classmethod
    def from_json(cls, d: dict) -> Record:
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Sources


def _strip_ext(rel: str) -> str:
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def _from_files(paths: list[str], root: str) -> list[Record]:
    return [Record(key=_strip_ext(os.path.relpath(p, root)), path=p) for p in paths]


def _from_glob(pattern: str) -> list[Record]:
    paths = sorted(
        os.path.abspath(p)
        for p in glob.glob(pattern, recursive=True)
        if os.path.isfile(p) and p.lower().endswith(audio_io.AUDIO_EXTENSIONS)
    )
    if not paths:
        raise ValueError(f"--input {pattern!r}: the glob matches no audio files")
    fixed = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        fixed.append(part)
    root = os.sep.join(fixed) or "."
    return _from_files(paths, os.path.abspath(root))


def _seconds(value, where: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a number of seconds") from None


def _from_manifest(path: str) -> list[Record]:
    base = os.path.dirname(os.path.abspath(path))
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not a JSON object ({e})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: not a JSON object")
            audio = obj.pop("path", None) or obj.pop("audio_filepath", None)
            if not isinstance(audio, str):
                raise ValueError(f"{where}: needs a 'path' or 'audio_filepath' string")
            audio = os.path.normpath(os.path.join(base, audio))
            start = _seconds(obj.pop("start", None), where)
            end = _seconds(obj.pop("end", None), where)
            duration = _seconds(obj.pop("duration", None), where)
            if "offset" in obj:  # NeMo: offset + duration
                start = _seconds(obj.pop("offset"), where)
                end = None if duration is None else start + duration
            if start is not None and end is not None and end <= start:
                raise ValueError(f"{where}: end {end} is not after start {start}")
            key = obj.pop("key", None) or obj.pop("id", None)
            if key is None:
                key = _strip_ext(os.path.relpath(audio, base))
            records.append(
                Record(
                    key=str(key), path=audio, start=start, end=end,
                    text=obj.pop("text", None), speaker=_opt_str(obj.pop("speaker", None)),
                    language=obj.pop("language", None),
                    duration=(end - (start or 0.0)) if end is not None else duration,
                    extra=obj,
                )
            )  # fmt: skip
    return records


def _opt_str(v):
    return None if v is None else str(v)


def _kaldi_table(path: str, *, rest: bool = True) -> dict[str, str]:
    """``{first field: the rest of the line}`` of a Kaldi table file."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if rest and len(parts) < 2:
                raise ValueError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
            table[parts[0]] = parts[1] if len(parts) > 1 else ""
    return table


def _from_kaldi(directory: str) -> list[Record]:
    scp = _kaldi_table(os.path.join(directory, "wav.scp"))
    for rec, value in scp.items():
        if value.endswith("|") or value.startswith("-"):
            raise ValueError(
                f"{directory}/wav.scp: {rec} is a piped command ({value!r}); only plain paths "
                "are supported (write the audio to files first)"
            )
        scp[rec] = os.path.normpath(os.path.join(directory, value))
    text = _table_if(directory, "text")
    spk = _table_if(directory, "utt2spk")
    records = []
    seg_path = os.path.join(directory, "segments")
    if os.path.isfile(seg_path):
        for utt, value in _kaldi_table(seg_path).items():
            parts = value.split()
            if len(parts) != 3 or parts[0] not in scp:
                raise ValueError(
                    f"{seg_path}: {utt}: expected '<utt> <recording in wav.scp> <start> <end>'"
                )
            start = _seconds(parts[1], f"{seg_path}: {utt}")
            end = _seconds(parts[2], f"{seg_path}: {utt}")
            end = None if end is not None and end < 0 else end  # Kaldi: -1 is the file's end
            records.append(
                Record(
                    key=utt, path=scp[parts[0]], start=start, end=end, text=text.get(utt),
                    speaker=spk.get(utt), duration=None if end is None else end - start,
                )
            )  # fmt: skip
    else:
        records = [
            Record(key=utt, path=p, text=text.get(utt), speaker=spk.get(utt))
            for utt, p in scp.items()
        ]
    return records


def _table_if(directory: str, name: str) -> dict[str, str]:
    path = os.path.join(directory, name)
    return _kaldi_table(path, rest=False) if os.path.isfile(path) else {}


def _find_dataset_info(directory: str) -> str | None:
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "incomplete")))
        if "dataset_info.json" in filenames:
            return dirpath
    return None


def _from_corpus(directory: str, split: str) -> list[Record]:
    source = _corpus_source(directory, split)
    records = []
    for i in range(len(source)):
        rec = source.record(i)
        records.append(
            Record(
                key=str(rec["id"]), path=f"{CORPUS_PREFIX}{directory}#{split}", index=i,
                speaker=rec.get("speaker_id") or None, duration=float(rec["duration"]),
            )
        )  # fmt: skip
    return records


_SOURCES: dict[tuple[str, str], Any] = {}
_SOURCES_LOCK = threading.Lock()


def _corpus_source(directory: str, split: str):
    with _SOURCES_LOCK:
        if (directory, split) not in _SOURCES:
            from hificodec_jax.data.input_pipeline import ArrayRecordAudioSource

            _SOURCES[directory, split] = ArrayRecordAudioSource(directory, split)
        return _SOURCES[directory, split]


def read_records(source: str | os.PathLike, *, split: str = "train") -> list[Record]:
    """The records of ``source`` (see the module docstring), sorted by key; durations are
    filled in later by :func:`fill_durations`. Errors: ``ValueError`` naming the source."""
    source = os.fspath(source)
    if glob.has_magic(source) and not os.path.exists(source):
        records = _from_glob(source)
    elif os.path.isdir(source):
        if os.path.isfile(os.path.join(source, "wav.scp")):
            records = _from_kaldi(source)
        elif info := _find_dataset_info(source):
            records = _from_corpus(info, split)
        else:
            try:
                paths = audio_io.list_audio_files(source)
            except FileNotFoundError as e:
                raise ValueError(f"--input {source}: {e}") from None
            records = _from_files(paths, os.path.abspath(source))
    elif os.path.isfile(source) and source.lower().endswith((".jsonl", ".json")):
        records = _from_manifest(source)
    elif os.path.isfile(source):
        raise ValueError(
            f"--input {source}: not a JSONL manifest (.jsonl), a directory or a glob of audio"
        )
    else:
        raise ValueError(f"--input {source}: no such file, directory or glob match")
    if not records:
        raise ValueError(f"--input {source}: no records")
    counts: dict[str, int] = {}
    for r in records:
        counts[r.key] = counts.get(r.key, 0) + 1
    dups = sorted(k for k, c in counts.items() if c > 1)
    if dups:
        shown = ", ".join(repr(k) for k in dups[:10])
        raise ValueError(
            f"--input {source}: {len(dups)} duplicate keys ({shown}{', ...' if len(dups) > 10 else ''}); "
            "give each record a unique 'key'"
        )
    return sorted(records, key=lambda r: r.key)


# --------------------------------------------------------------------------------------------
# Durations and audio


def _duration(record: Record) -> float:
    """Seconds of audio of ``record`` from the file header (0 when unreadable: the record then
    fails, with its reason, when the job reads it)."""
    import soundfile as sf

    try:
        total = sf.info(record.path).duration
    except Exception:
        return 0.0
    end = total if record.end is None else min(record.end, total)
    return max(end - (record.start or 0.0), 0.0)


def fill_durations(records: list[Record], workers: int = 8) -> None:
    """Fill in each record's ``duration`` (seconds) where it is unknown, reading headers on
    ``workers`` threads."""
    todo = [r for r in records if r.duration is None]
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for r, d in zip(todo, pool.map(_duration, todo), strict=True):
            r.duration = d


class BadAudio(ValueError):
    """A record's audio cannot be tokenized (unreadable, empty, silent, NaN, too short...)."""


def _read(record: Record) -> tuple[np.ndarray, int]:
    """``(wav [T] float32 mono at the file's rate, rate)`` of the record's audio."""
    if record.index is not None and record.path.startswith(CORPUS_PREFIX):
        directory, split = record.path[len(CORPUS_PREFIX) :].rsplit("#", 1)
        source = _corpus_source(directory, split)
        return (
            audio_io.int16_to_float(source.record(record.index)["audio"]),
            int(source.stored_rate),
        )
    if record.start is None and record.end is None:
        return audio_io.read_audio(record.path)
    import soundfile as sf

    with sf.SoundFile(record.path) as f:
        rate = f.samplerate
        start = round((record.start or 0.0) * rate)
        stop = f.frames if record.end is None else min(round(record.end * rate), f.frames)
        f.seek(min(start, f.frames))
        data = f.read(max(stop - start, 0), dtype="float32", always_2d=True)
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(wav, np.float32), int(rate)


def load_audio(
    record: Record, sample_rate: int, hop: int, *, reject_silent: bool = True
) -> tuple[np.ndarray, int, int]:
    """``(wav [T] float32 at sample_rate, the source's rate, its length there)``, channels
    averaged; :class:`BadAudio` with the reason when the audio cannot be tokenized."""
    try:
        wav, rate = _read(record)
    except Exception as e:  # any decoder failure is a bad record
        raise BadAudio(f"unreadable: {type(e).__name__}: {e}") from None
    if wav.size == 0:
        raise BadAudio("empty (no samples)")
    if not np.all(np.isfinite(wav)):
        raise BadAudio(f"non-finite samples ({int(np.sum(~np.isfinite(wav)))} of {wav.size})")
    if reject_silent and float(np.max(np.abs(wav))) < audio_io.SILENCE_PEAK:
        raise BadAudio(f"silent (peak {float(np.max(np.abs(wav))):.2g})")
    out = audio_io.resample(wav, rate, sample_rate)
    if out.shape[0] < hop:
        raise BadAudio(
            f"too short ({out.shape[0]} samples at {sample_rate} Hz < one frame of {hop})"
        )
    return out, rate, int(wav.shape[0])
