"""Exports of a token store: one ``.npy`` per record (resumable, never half-written) and a
Hugging Face dataset; both hold exactly the store's records."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import soundfile as sf
from helpers import config, fast_init

import hificodec_jax
from hificodec_jax import model_dir
from hificodec_jax.cli import tokenize as command
from hificodec_jax.tokens import TokenSource, export, job, store

RATE = 16000


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    """A store of 7 clips from two speaker directories (the tiny model, random weights), plus
    a JSONL manifest's text and speaker fields for three of them."""
    root = tmp_path_factory.mktemp("export")
    cfg = config("tiny")
    model = model_dir.save_model(
        root / "model", cfg, fast_init(hificodec_jax.build_codec(cfg), 4000)
    )
    rng = np.random.default_rng(0)
    lines = []
    for i, seconds in enumerate((0.3, 0.5, 0.3, 0.8, 0.5, 0.3, 0.8)):
        path = root / "in" / f"s{i % 2}" / f"c{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * RATE)) / RATE
        wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(path, wav.astype(np.float32), RATE)
        line = {"path": str(path), "key": f"s{i % 2}/c{i}", "speaker": f"spk{i % 2}"}
        if i < 3:
            line["text"] = f"clip {i}"
        lines.append(json.dumps(line))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = root / "store"
    job.tokenize(str(model), str(manifest), str(out), unit_hours=1 / 3600, progress=False)
    return str(out)


def stored(directory) -> dict[str, np.ndarray]:
    source = TokenSource(directory)
    return {source[i]["key"]: source[i]["codes"] for i in range(len(source))}


def test_npy_export_holds_every_record(token_store, tmp_path):
    out = tmp_path / "npy"
    summary = export.export_npy(token_store, out)
    records = stored(token_store)
    assert summary["records"] == summary["written"] == len(records) == 7
    assert summary["skipped"] == 0
    for key, codes in records.items():
        array = np.load(out / f"{key}.npy")
        assert array.dtype == np.int16 and array.shape == codes.shape
        np.testing.assert_array_equal(array, codes)
    assert store.read_json(out / store.DATASET) == store.read_json(f"{token_store}/dataset.json")
    assert (out / store.INDEX).read_text() == open(f"{token_store}/{store.INDEX}").read()


def test_npy_export_resumes_after_a_crash(token_store, tmp_path):
    out = tmp_path / "npy"
    export.export_npy(token_store, out)
    before = {k: (out / f"{k}.npy").read_bytes() for k in stored(token_store)}
    # A crash mid-write leaves a temporary; a file cut short by something else is rewritten.
    tmp = out / "s0" / store.tmp_name("c2.npy")
    tmp.write_bytes(b"\x93NUMPY")
    victim = out / "s1" / "c3.npy"
    victim.write_bytes(victim.read_bytes()[:-7])
    os.remove(out / "s0" / "c4.npy")
    summary = export.export_npy(token_store, out)
    assert (summary["written"], summary["skipped"]) == (2, 5)
    assert not tmp.exists()
    assert {k: (out / f"{k}.npy").read_bytes() for k in before} == before


def test_npy_export_refuses_another_stores_directory(token_store, tmp_path):
    out = tmp_path / "npy"
    export.export_npy(token_store, out)
    other = json.loads((out / store.DATASET).read_text())
    other["codec"]["model_id"] = "another-model"
    (out / store.DATASET).write_text(json.dumps(other))
    with pytest.raises(ValueError, match="another token store"):
        export.export_npy(token_store, out)


@pytest.mark.parametrize("key", ["../up", "/abs/x", "a//b", "a/./b"])
def test_keys_that_would_leave_the_directory_are_refused(key):
    with pytest.raises(ValueError, match="cannot name a file"):
        export._record_path("/out", key)


def test_hf_export_holds_every_record_and_the_index(token_store, tmp_path):
    import datasets

    out = tmp_path / "hf"
    summary = export.export_hf(token_store, out)
    assert summary["records"] == 7
    assert not [f for f in os.listdir(tmp_path) if f != "hf"]  # the build directory is gone
    dataset = datasets.load_from_disk(str(out)).with_format("numpy")
    source = TokenSource(token_store)
    assert len(dataset) == len(source)
    assert dataset.features["codes"].dtype == "int16"  # stored; numpy formatting upcasts to int64
    identity = json.loads(dataset.info.description)["hificodec_jax_tokens"]
    assert identity["codec"] == source.metadata["codec"]
    for i in range(len(source)):
        row, info, record = dataset[i], source.info(i), source[i]
        assert row["key"] == record["key"]
        np.testing.assert_array_equal(row["codes"], record["codes"])
        assert row["num_frames"] == record["num_frames"] == source.lengths[i]
        assert row["speaker"] == info["speaker"] and row["text"] == info.get("text")
        assert row["duration"] == pytest.approx(info["duration"])
    assert sum(t is not None for t in dataset.with_format(None)["text"]) == 3
    with pytest.raises(FileExistsError, match="hf"):
        export.export_hf(token_store, out)


def test_cli_exports_and_reports(token_store, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = ["--export", token_store, "--format", "npy", "--out", str(tmp_path / "n")]
    assert command.run(parser.parse_args([*args, "--no-progress"])) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 7
    assert command.run(parser.parse_args(["--export", token_store])) == 2
    assert "--export needs --out" in capsys.readouterr().err
    missing = ["--export", str(tmp_path / "none"), "--out", str(tmp_path / "m")]
    assert command.run(parser.parse_args(missing)) == 2
    assert "dataset.json" in capsys.readouterr().err
