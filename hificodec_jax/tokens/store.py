"""The token store: its files, the record format, atomic commits and :class:`TokenSource`.

A store directory holds::

    tokens-00012-of-00480.array_record   one shard per work unit (ArrayRecord, group_size:1)
    tokens-00012-of-00480.json           its sidecar: records, errors, hours, sha256 (commit marker)
    plan.json                            the records cut into units (fixed when the job starts)
    index.jsonl                          one line per record, in shard order (key, shard, offset,
                                         frames, duration, text, speaker, language, source, ...)
    lengths.npy                          int32 frames of every record, in the same order
    errors.jsonl                         the records that could not be tokenized, with reasons
    dataset.json                         codec identity, stream order, totals (written last)

A record is a msgpack map ``{key: str, codes: bytes, shape: [frames, streams], num_frames}``
(``codes`` little-endian int16): plain data, no pickle, nothing is executed when reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

FORMAT = "hificodec-jax-tokens"
FORMAT_VERSION = 1
PLAN, INDEX, LENGTHS, ERRORS, DATASET = (
    "plan.json", "index.jsonl", "lengths.npy", "errors.jsonl", "dataset.json",
)  # fmt: skip
WRITER_OPTIONS = "group_size:1"  # random access reads one record without decoding its neighbours
TMP_MARK = ".tmp-"


def require_train_extra():
    """Import array_record, with a clear message when the ``[train]`` extra is missing."""
    try:
        from array_record.python import array_record_module
    except ImportError as e:
        raise ImportError(
            "tokenize needs array_record and grain: pip install 'hificodec-jax[train]'"
        ) from e
    return array_record_module


def shard_name(unit: int, num_units: int) -> str:
    return f"tokens-{unit:05d}-of-{num_units:05d}.array_record"


def sidecar_name(unit: int, num_units: int) -> str:
    return f"tokens-{unit:05d}-of-{num_units:05d}.json"


def tmp_name(name: str) -> str:
    """A temporary name beside ``name``, unique per process (hidden: starts with a dot)."""
    return f".{name}{TMP_MARK}{os.getpid()}"


def is_tmp_of(filename: str, name: str) -> bool:
    return filename.startswith(f".{name}{TMP_MARK}")


def is_tmp(filename: str) -> bool:
    """Whether ``filename`` is a temporary of :func:`tmp_name` (of any file)."""
    return filename.startswith(".") and TMP_MARK in filename


# --------------------------------------------------------------------------------------------
# Records


def pack_record(key: str, codes: np.ndarray) -> bytes:
    import msgpack

    codes = np.ascontiguousarray(codes, dtype="<i2")
    return msgpack.packb(
        {"key": key, "codes": codes.tobytes(), "shape": list(codes.shape),
         "num_frames": int(codes.shape[0])},
        use_bin_type=True,
    )  # fmt: skip


def unpack_record(raw: bytes) -> dict:
    """``{key, codes int16 [frames, streams], num_frames}`` of a stored record."""
    import msgpack

    d = msgpack.unpackb(raw, raw=False)
    codes = np.frombuffer(d["codes"], dtype="<i2").reshape(d["shape"]).astype(np.int16)
    return {"key": d["key"], "codes": codes, "num_frames": int(d["num_frames"])}


# --------------------------------------------------------------------------------------------
# Atomic files


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes | str) -> None:
    """``data`` into ``path`` through a temporary file and a rename (never half-written)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, tmp_name(name))
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_shard_tmp(directory: str, name: str, records: Sequence[bytes]) -> str:
    """The records into a temporary ArrayRecord file beside ``name``; returns its path."""
    module = require_train_extra()
    tmp = os.path.join(directory, tmp_name(name))
    writer = module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    for raw in records:
        writer.write(raw)
    writer.close()
    _fsync(tmp)
    return tmp


# --------------------------------------------------------------------------------------------
# The reader


class TokenSource:
    """A finished store as a grain random-access data source (``len``, ``source[i]``).

    ``source[i]`` is ``{key, codes int16 [frames, streams], num_frames}``; records are in
    shard order (units by key order, keys sorted within a unit). Without reading any record:
    ``lengths`` (frames, int32), :meth:`index_of`, :meth:`keys_of_speaker`,
    :meth:`indices_of_speaker`, :meth:`info` (the index line: text, speaker, duration, source,
    ...) and ``metadata`` (``dataset.json``: the codec's identity, stream order, totals).
    Thread-safe; picklable (grain workers reopen the shards).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.path.abspath(os.fspath(directory))
        path = os.path.join(self.directory, DATASET)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{self.directory}: no {DATASET} (not a token store, or the tokenize job has "
                "not finished: rerun it to complete and finalize)"
            )
        self.metadata = read_json(path)
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} store")
        self.lengths = np.load(os.path.join(self.directory, LENGTHS), mmap_mode="r")
        with open(os.path.join(self.directory, INDEX), encoding="utf-8") as f:
            self._index = [json.loads(line) for line in f]
        if len(self._index) != len(self.lengths):
            raise ValueError(f"{self.directory}: {INDEX} and {LENGTHS} disagree in length")
        self._keys = {r["key"]: i for i, r in enumerate(self._index)}
        self._speakers: dict[str, list[int]] | None = None
        self._reader = None

    @property
    def shards(self) -> list[str]:
        return [os.path.join(self.directory, s) for s in self.metadata["shards"]]

    def _source(self):
        if self._reader is None:
            require_train_extra()
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._reader = ArrayRecordDataSource(self.shards)
        return self._reader

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        return unpack_record(self._source()[index % len(self)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return [unpack_record(r) for r in self._source().__getitems__([int(i) for i in indices])]

    def index_of(self, key: str) -> int:
        try:
            return self._keys[key]
        except KeyError:
            raise KeyError(f"no record {key!r} in {self.directory}") from None

    def info(self, index: int) -> dict:
        """The index line of record ``index`` (no record is read)."""
        return dict(self._index[index])

    def indices_of_speaker(self, speaker: str) -> list[int]:
        if self._speakers is None:
            speakers: dict[str, list[int]] = {}
            for i, r in enumerate(self._index):
                if r.get("speaker") is not None:
                    speakers.setdefault(r["speaker"], []).append(i)
            self._speakers = speakers
        return list(self._speakers.get(speaker, []))

    def keys_of_speaker(self, speaker: str) -> list[str]:
        return [self._index[i]["key"] for i in self.indices_of_speaker(speaker)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None
        state["lengths"] = np.asarray(self.lengths)
        return state

    def __repr__(self) -> str:
        return f"TokenSource({self.directory!r}, {len(self)} records)"
