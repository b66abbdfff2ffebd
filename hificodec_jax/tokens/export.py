"""A finished token store exported as one ``.npy`` per record, or as a Hugging Face dataset.

``export_npy(STORE, OUT)`` writes ``OUT/<key>.npy`` (int16 ``[frames, streams]``; a key
``spk1/utt3`` becomes ``OUT/spk1/utt3.npy``) beside the store's ``dataset.json`` and
``index.jsonl``. Each file is written under a temporary name and renamed, so a file that exists
is whole: rerunning after a crash skips the files already there (their headers are checked
against the store's lengths) and writes the rest.

``export_hf(STORE, OUT)`` writes a ``datasets.Dataset`` with ``save_to_disk`` (columns ``key``,
``codes`` int16 ``[frames, streams]``, ``num_frames``, ``duration``, ``text``, ``speaker``,
``language``, ``source``, ``extra`` as JSON text), the codec's identity in its description;
read it with ``datasets.load_from_disk(OUT)``. It is built in a temporary directory beside
``OUT`` and renamed when complete. Needs ``pip install 'hificodec-jax[datasets]'``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from hificodec_jax.tokens import store

_INDEX_COLUMNS = ("text", "speaker", "language", "source")


def _record_path(out: str, key: str) -> str:
    """``OUT/<key>.npy``; a key that would leave ``OUT`` (absolute, ``..``) is refused."""
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"record key {key!r} cannot name a file under {out}")
    return os.path.join(out, *parts) + ".npy"


def _has_shape(path: str, shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is an int16 ``.npy`` of ``shape`` whose data is all there."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.dtype == np.int16 and array.shape == shape


def export_npy(directory: str | os.PathLike, out: str | os.PathLike, *, progress=False) -> dict:
    """Every record of the store ``directory`` as ``out/<key>.npy``; ``{written, skipped, out}``."""
    source = store.TokenSource(directory)
    out = os.path.abspath(os.fspath(out))
    streams = int(source.metadata["codec"]["streams"])
    paths = [_record_path(out, source.info(i)["key"]) for i in range(len(source))]
    os.makedirs(out, exist_ok=True)
    # dataset.json goes first: a rerun into the same directory must be of the same store.
    marker = os.path.join(out, store.DATASET)
    if os.path.isfile(marker) and store.read_json(marker) != source.metadata:
        raise ValueError(f"{out} holds an export of another token store ({marker} differs)")
    store.write_json(marker, source.metadata)
    for parent, _, files in os.walk(out):  # a killed run's temporaries
        for name in filter(store.is_tmp, files):
            os.remove(os.path.join(parent, name))
    indices = range(len(source))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="export .npy", unit="record")
    written = skipped = 0
    for i in indices:
        path = paths[i]
        if _has_shape(path, (int(source.lengths[i]), streams)):
            skipped += 1
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), store.tmp_name(os.path.basename(path)))
        with open(tmp, "wb") as f:
            np.save(f, source[i]["codes"])
        os.replace(tmp, path)
        written += 1
    shutil.copyfile(os.path.join(source.directory, store.INDEX), os.path.join(out, store.INDEX))
    return {"out": out, "records": len(source), "written": written, "skipped": skipped}


def export_hf(directory: str | os.PathLike, out: str | os.PathLike, *, progress=False) -> dict:
    """The store ``directory`` as a Hugging Face ``datasets`` dataset saved at ``out``."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "the Hugging Face export needs datasets: pip install 'hificodec-jax[datasets]'"
        ) from e
    source = store.TokenSource(directory)
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists: the Hugging Face export writes a new directory")
    streams = int(source.metadata["codec"]["streams"])
    features = datasets.Features(
        {
            "key": datasets.Value("string"),
            "codes": datasets.Array2D(shape=(None, streams), dtype="int16"),
            "num_frames": datasets.Value("int32"),
            "duration": datasets.Value("float64"),
            **{c: datasets.Value("string") for c in _INDEX_COLUMNS},
            "extra": datasets.Value("string"),
        }
    )

    def rows():
        for i in range(len(source)):
            record, info = source[i], source.info(i)
            yield {
                "key": record["key"], "codes": record["codes"],
                "num_frames": record["num_frames"], "duration": info.get("duration"),
                **{c: _text(info.get(c)) for c in _INDEX_COLUMNS},
                "extra": json.dumps(info.get("extra") or {}, sort_keys=True),
            }  # fmt: skip

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        _build_hf(datasets, rows, features, source.metadata, parent, out)
    finally:
        if not progress and not bars_were_off:
            datasets.enable_progress_bars()
    return {"out": out, "records": len(source), "written": len(source), "skipped": 0}


def _build_hf(datasets, rows, features, metadata, parent, out) -> None:
    """The dataset built in a temporary directory beside ``out``, renamed when complete."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{os.path.basename(out)}.tmp-") as tmp:
        info = datasets.DatasetInfo(
            description=json.dumps({"hificodec_jax_tokens": metadata}, sort_keys=True)
        )
        dataset = datasets.Dataset.from_generator(
            rows, features=features, cache_dir=os.path.join(tmp, "cache"), info=info
        )
        dataset.save_to_disk(os.path.join(tmp, "dataset"))
        del dataset  # its cache files are under tmp, removed on leaving
        os.replace(os.path.join(tmp, "dataset"), out)


def _text(value) -> str | None:
    return None if value is None else str(value)
