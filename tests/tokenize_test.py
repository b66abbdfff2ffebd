"""The tokenize job on the tiny config: codes equal single-file encode whatever the batch
budget (up to float-rounding near-ties), shards are bytes that kills and process counts do not
change, bad files are listed with reasons, every input kind reads, the store reads back
through TokenSource and grain, and verify catches a corrupt shard.

The reference for a record is ``jit(codec.apply(method="encode"))`` on its audio alone. The
exactness run and the resume / multi-process runs are subprocesses with the session's XLA
flags (conftest: cheaper code generation, the same programs; a reference and the batches
it is compared with always compile under the same flags) and 2 CPU devices; clip lengths come from a small set so that the references
compile few shapes. With the random codebooks of these tests near-ties are common: where a
padded batch rounds differently from the clip alone, one frame of a record may flip.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from helpers import REPO, config, fast_init, xla_flags

import hificodec_jax
from hificodec_jax import model_dir
from hificodec_jax.audio import audio_io
from hificodec_jax.cli import tokenize as command
from hificodec_jax.tokens import TokenSource, inputs, job, store

RATE = 16000
SHORT = (0.2, 0.35, 0.5, 0.7, 1.0, 1.3, 1.7)  # seconds
MEDIUM = (3.0, 5.0, 8.0, 12.0, 18.0, 24.0, 30.0)
LONG = (120.0, 121.0)  # the "whole file" path (past the 30 s batching window)
BAD = {
    "bad/garbage": "unreadable",
    "bad/empty": "empty",
    "bad/silent": "silent",
    "bad/nan": "non-finite",
    "bad/short": "too short",
}


def speechlike(seconds: float, rng, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """Harmonics on a wandering pitch with a syllable-rate envelope, plus a little noise."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 6))
    wav *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    wav = 0.2 * wav + 0.01 * rng.standard_normal(n)
    if channels > 1:
        wav = np.stack([wav, 0.5 * wav + 0.01 * rng.standard_normal(n)], axis=1)
    return wav.astype(np.float32)


def write(path, wav, rate=RATE, subtype="FLOAT"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, wav, rate, subtype=subtype)


def write_bad(root):
    os.makedirs(os.path.join(root, "bad"), exist_ok=True)
    with open(os.path.join(root, "bad", "garbage.wav"), "wb") as f:
        f.write(b"RIFF not really a wav file")
    write(os.path.join(root, "bad", "empty.wav"), np.zeros(0, np.float32))
    write(os.path.join(root, "bad", "silent.wav"), np.zeros(RATE, np.float32))
    nan = np.full(RATE, 0.1, np.float32)
    nan[100] = np.nan
    write(os.path.join(root, "bad", "nan.wav"), nan)
    write(os.path.join(root, "bad", "short.wav"), np.full(10, 0.1, np.float32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = config("tiny")
    directory = model_dir.save_model(
        tmp_path_factory.mktemp("model") / "tiny",
        cfg,
        fast_init(hificodec_jax.build_codec(cfg), 4000),
    )
    codec, variables = hificodec_jax.load(directory)
    encode = jax.jit(functools.partial(codec.apply, method="encode"))
    return {"dir": directory, "codec": codec, "variables": variables, "encode": encode}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """200 clips of 0.2-30 s, mostly short (4 speakers; a few at 22.05 kHz, one stereo, some
    FLAC), two files of 2 minutes and five bad files."""
    root = str(tmp_path_factory.mktemp("corpus"))
    rng = np.random.default_rng(0)
    keys = []
    for i in range(200):
        seconds = SHORT[i % len(SHORT)] if i % 20 else MEDIUM[(i // 20) % len(MEDIUM)]
        key = f"spk{i % 4}/u{i:03d}"
        if i % 50 == 3:  # resampled (and downmixed) on reading
            write(f"{root}/{key}.wav", speechlike(seconds, rng, 22050, 1 + (i == 3)), 22050)
        elif i % 5 == 1:
            write(f"{root}/{key}.flac", speechlike(seconds, rng), subtype="PCM_16")
        else:
            write(f"{root}/{key}.wav", speechlike(seconds, rng))
        keys.append(key)
    for j, seconds in enumerate(LONG):
        write(f"{root}/long/l{j}.flac", speechlike(seconds, rng), subtype="PCM_16")
        keys.append(f"long/l{j}")
    write_bad(root)
    return root, sorted(keys)


def subprocess_env(devices: int) -> dict:
    """The session's XLA flags with ``devices`` CPU devices, this checkout first, and
    the session's compilation cache (the subprocesses compile the same shapes)."""
    return dict(
        os.environ,
        XLA_FLAGS=xla_flags(devices),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir or ""),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


@pytest.fixture(scope="module")
def exact_run(tiny, corpus, tmp_path_factory):
    """tokenize_worker.py: references alone and stores with batch budgets 1, 16, 64."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("exact")
    run = subprocess.run(
        [sys.executable, str(REPO / "tests" / "tokenize_worker.py"), str(tiny["dir"]), root, str(out)],
        env=subprocess_env(2), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-5000:]
    report = json.loads((out / "report.json").read_text())
    return report, {int(b): str(out / f"store{b}") for b in (1, 16, 64)}


@pytest.fixture(scope="module")
def stores(exact_run):
    return exact_run[1]


def read_all(directory) -> dict[str, np.ndarray]:
    source = TokenSource(directory)
    return {source[i]["key"]: source[i]["codes"] for i in range(len(source))}


def shard_digests(directory) -> dict[str, str]:
    return {
        f: hashlib.sha256(open(os.path.join(directory, f), "rb").read()).hexdigest()
        for f in sorted(os.listdir(directory))
        if f.endswith(".array_record")
    }


def test_codes_equal_single_file_encode(exact_run, corpus):
    """Equal, up to float-rounding near-ties (one frame here and there where the masked,
    padded program rounds differently from the unpadded one; with the random codebooks of
    these tests near-ties are common). Zero-padding without lengths, for contrast, changes
    most frames."""
    report, _ = exact_run
    _, keys = corpus
    assert report["keys"] == keys
    for budget in ("1", "16", "64"):
        run = report[budget]
        assert run["summary"]["complete"] and run["summary"]["errors"] == len(BAD), budget
        assert sorted(run["stored_keys"]) == keys, budget  # every good key, once
        assert run["frames"] > 200_000
        differing = sum(frames for _, frames, _ in run["differ"])
        assert differing <= 1e-4 * run["frames"], (budget, run["differ"])
        assert all(frames <= 2 for _, frames, _ in run["differ"]), (budget, run["differ"])
    assert len(report["1"]["digests"]) > 3  # several units
    assert report["zero_padded_frames_differing"] > 0.3


def test_bad_files_listed_with_reasons(stores):
    with open(os.path.join(stores[16], store.ERRORS)) as f:
        errors = {e["key"]: e for e in map(json.loads, f)}
    assert sorted(errors) == sorted(BAD)
    for key, reason in BAD.items():
        assert errors[key]["reason"].startswith(reason), errors[key]
        assert errors[key]["path"].endswith(key + ".wav")
    meta = store.read_json(os.path.join(stores[16], store.DATASET))
    assert meta["totals"]["errors"] == len(BAD) and meta["totals"]["records"] == 202


def test_too_many_errors_fail_the_job_and_keep_committed_units(tiny, corpus, tmp_path, capsys):
    root, _ = corpus
    manifest = tmp_path / "m.jsonl"
    good = [f"{root}/spk0/u000.wav", f"{root}/spk0/u004.wav"]
    bad = [f"{root}/bad/{n}.wav" for n in ("garbage", "silent", "nan")]
    manifest.write_text("".join(json.dumps({"path": p}) + "\n" for p in good + bad))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = ["--model", tiny["dir"], "--input", str(manifest), "--out", str(tmp_path / "o"),
            "--no-progress", "--unit-hours", "0.0001", "--max-error-rate", "0.5"]  # fmt: skip
    assert command.run(parser.parse_args(args)) == 1
    assert "--max-error-rate" in capsys.readouterr().err
    assert any(f.endswith(".json") and f.startswith("tokens-") for f in os.listdir(tmp_path / "o"))


def test_token_source_round_trips_every_key(stores, corpus):
    _, keys = corpus
    source = TokenSource(stores[64])
    other = read_all(stores[1])
    assert len(source) == len(keys) == len(source.lengths) == len(other)
    for key in keys:
        i = source.index_of(key)
        record = source[i]
        want = other[key]
        assert record["key"] == key and record["num_frames"] == want.shape[0] == source.lengths[i]
        np.testing.assert_array_equal(record["codes"], want)
        info = source.info(i)
        assert info["num_samples"] // 40 == want.shape[0] > 0
        assert info["duration"] == pytest.approx(info["num_samples"] / RATE, abs=1e-3)
    assert source.keys_of_speaker("spk1") == []  # a directory input has no speakers
    meta = source.metadata["codec"]
    assert (meta["hop"], meta["streams"], meta["num_groups"], meta["dtype"]) == (40, 4, 2, "int16")
    assert (
        meta["model_id"]
        == model_dir.model_id(TokenSource(stores[1]).metadata["codec"]["model"]).hex()
    )
    with pytest.raises(KeyError, match="nope"):
        source.index_of("nope")


def test_grain_pipeline_from_the_docs_runs(stores, tmp_path):
    text = (REPO / "docs" / "tokenize.md").read_text()
    section = text[text.index("## Training from the store with grain") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'TokenSource("tokens/")' in snippet
    snippet = snippet.replace('TokenSource("tokens/")', f"TokenSource({stores[16]!r})")
    snippet = snippet.replace("max_frames = 1500", "max_frames = 400")
    namespace: dict = {}
    exec(compile(snippet, "docs/tokenize.md", "exec"), namespace)  # noqa: S102
    batch, source = namespace["batch"], namespace["source"]
    assert batch["codes"].shape == (8, 400, 4) and batch["codes"].dtype == np.int32
    lengths = batch["mask"].sum(axis=1)
    assert np.all(lengths <= 400) and np.all(lengths > 0)
    assert len(namespace["keep"]) == int(np.sum(np.asarray(source.lengths) <= 400))


def test_verify_passes_and_catches_a_flipped_byte(stores, tiny, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args(["--verify", stores[16], "--sample", "4"])) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["reencoded"] == 4 and report["records"] == 202 and report["errors"] == 5
    copy = tmp_path / "store"
    shutil.copytree(stores[16], copy)
    shard = sorted(f for f in os.listdir(copy) if f.endswith(".array_record"))[2]
    data = bytearray((copy / shard).read_bytes())
    data[len(data) // 3] ^= 0x10
    (copy / shard).write_bytes(bytes(data))
    assert command.run(parser.parse_args(["--verify", str(copy), "--sample", "0"])) == 1
    err = capsys.readouterr().err
    assert f"{shard}: sha256" in err and "corrupt" in err


def test_grvq4_codes_equal_single_file_encode(tmp_path):
    """The released architecture (random weights), given as (codec, variables, identity)."""
    cfg = config("grvq4")
    codec = hificodec_jax.build_codec(cfg, weight_norm=False)
    variables = fast_init(hificodec_jax.build_codec(cfg), 3200)
    variables = {**variables, "params": hificodec_jax.fold_weight_norm(variables["params"])}
    rng = np.random.default_rng(1)
    wavs = {f"c{i}": speechlike(s, rng) for i, s in enumerate((1.0, 0.6, 1.0, 1.0))}
    for key, wav in wavs.items():
        write(str(tmp_path / "in" / f"{key}.wav"), wav)
    identity = {"sample_rate": RATE, "name": "grvq4-random"}
    summary = job.tokenize(
        (codec, variables, identity), tmp_path / "in", tmp_path / "out", progress=False, levels=1
    )
    assert summary["complete"] and summary["records"] == 4
    encode = jax.jit(functools.partial(codec.apply, method="encode", num_levels=1))
    codes = read_all(tmp_path / "out")
    for key, wav in wavs.items():
        np.testing.assert_array_equal(codes[key], np.asarray(encode(variables, wav)), err_msg=key)
    meta = TokenSource(tmp_path / "out").metadata["codec"]
    assert (meta["hop"], meta["streams"], meta["codebook_size"]) == (320, 2, 1024)


# --------------------------------------------------------------------------------------------
# Resume and processes: the CLI in subprocesses (the session's XLA flags, 2 CPU devices each)

CLI = (
    "import argparse, sys; from hificodec_jax.cli import tokenize as command; "
    "p = argparse.ArgumentParser(); command.add_arguments(p); "
    "sys.exit(command.run(p.parse_args(sys.argv[1:])))"
)


@pytest.fixture(scope="module")
def small(tiny, tmp_path_factory):
    """24 short clips and a bad file, and the store of one uninterrupted process."""
    root = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(2)
    for i in range(24):
        write(
            str(root / "in" / f"s{i % 3}" / f"c{i:02d}.wav"), speechlike(SHORT[i % len(SHORT)], rng)
        )
    write_bad(str(root / "in"))
    reference = root / "reference"
    run = cli(tiny, root / "in", reference)
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "in", reference


def cli(tiny, source, out, *extra, crash=None, wait=True):
    env = subprocess_env(2)
    if crash:
        env[job.CRASH_ENV] = crash
    args = [sys.executable, "-c", CLI, "--model", str(tiny["dir"]), "--input", str(source),
            "--out", str(out), "--unit-hours", str(2 / 3600), "--max-error-rate", "0.5",
            "--max-batch", "4", "--no-progress", *extra]  # fmt: skip
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def store_files(directory) -> dict[str, bytes]:
    """The files that must match between runs (dataset.json holds versions and the input)."""
    names = [f for f in os.listdir(directory) if f.endswith((".array_record", ".npy", ".jsonl"))]
    return {f: open(os.path.join(directory, f), "rb").read() for f in sorted(names)}


def test_killed_and_restarted_gives_identical_shards(tiny, small, tmp_path):
    source, reference = small
    want = store_files(reference)
    num_units = len(store.read_json(os.path.join(reference, store.PLAN))["units"])
    assert num_units >= 6
    out = tmp_path / "out"
    name = lambda u: store.shard_name(u, num_units)  # noqa: E731
    for crash in ("encoded:1", "shard_tmp:3", "shard_renamed:4", "finalize"):
        run = cli(tiny, source, out, crash=crash)
        assert run.returncode == -signal.SIGKILL, (crash, run.stderr[-3000:])
        files = os.listdir(out)
        if crash == "shard_tmp:3":  # killed with the shard half-way: only a temporary
            assert any(store.is_tmp_of(f, name(3)) for f in files) and name(3) not in files
        if crash == "shard_renamed:4":  # killed between the shard's rename and its sidecar
            assert name(4) in files and store.sidecar_name(4, num_units) not in files
        assert store.DATASET not in files
    run = cli(tiny, source, out)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["units_skipped"] == num_units and summary["complete"]
    assert not [f for f in os.listdir(out) if store.TMP_MARK in f]
    got = store_files(out)
    assert got.keys() == want.keys()
    for f in want:
        assert got[f] == want[f], f
    keys = [json.loads(line)["key"] for line in got[store.INDEX].decode().splitlines()]
    assert len(keys) == len(set(keys)) == 24
    errors = [json.loads(line)["key"] for line in got[store.ERRORS].decode().splitlines()]
    assert sorted(errors) == sorted(BAD)


def test_three_processes_give_the_shards_of_one(tiny, small, tmp_path):
    source, reference = small
    port = _free_port()
    out = tmp_path / "out"
    procs = [
        cli(
            tiny,
            source,
            out,
            "--coordinator_address",
            f"127.0.0.1:{port}",
            "--num_processes",
            "3",
            "--process_id",
            str(i),
            wait=False,
        )  # fmt: skip
        for i in range(3)
    ]
    try:
        outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]
    assert store_files(out) == store_files(reference)
    plan = store.read_json(os.path.join(out, store.PLAN))
    sidecars = [store.read_json(os.path.join(out, store.sidecar_name(u, len(plan["units"]))))
                for u in range(len(plan["units"]))]  # fmt: skip
    assert len({s["unit"] for s in sidecars}) == len(plan["units"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Inputs


def test_manifest_kaldi_and_glob_inputs(tmp_path):
    rng = np.random.default_rng(3)
    a, b = speechlike(1.0, rng), speechlike(2.0, rng, rate=8000, channels=2)
    write(str(tmp_path / "wav" / "a.wav"), a)
    write(str(tmp_path / "wav" / "sub" / "b.flac"), b, 8000, "PCM_16")
    manifest = tmp_path / "m.jsonl"
    lines = [
        {"audio_filepath": "wav/a.wav", "text": "hello", "speaker": 7, "lang": "en"},
        {"path": "wav/sub/b.flac", "start": 0.5, "end": 1.5, "key": "b-seg", "language": "fr"},
        {"path": "wav/a.wav", "offset": 0.25, "duration": 0.5, "id": "a-seg"},
    ]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    recs = {r.key: r for r in inputs.read_records(manifest)}
    assert list(recs) == ["a-seg", "b-seg", "wav/a"]  # sorted by key
    assert (recs["wav/a"].text, recs["wav/a"].speaker, recs["wav/a"].extra) == (
        "hello",
        "7",
        {"lang": "en"},
    )
    assert (recs["b-seg"].start, recs["b-seg"].end, recs["b-seg"].duration) == (0.5, 1.5, 1.0)
    assert (recs["a-seg"].start, recs["a-seg"].end) == (0.25, 0.75)
    wav, rate, n = inputs.load_audio(recs["b-seg"], RATE, 40)
    assert (rate, n, wav.shape) == (8000, 8000, (RATE,))
    full, _ = audio_io.read_audio(str(tmp_path / "wav" / "sub" / "b.flac"))
    np.testing.assert_array_equal(wav, audio_io.resample(full[4000:12000], 8000, RATE))

    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"recA {tmp_path}/wav/a.wav\nrecB ../wav/sub/b.flac\n")
    (kaldi / "segments").write_text("u1 recA 0.0 0.5\nu2 recA 0.5 -1\nu3 recB 1.0 2.0\n")
    (kaldi / "text").write_text("u1 one two\nu2 three\n")
    (kaldi / "utt2spk").write_text("u1 s1\nu2 s1\nu3 s2\n")
    recs = inputs.read_records(kaldi)
    assert [(r.key, r.start, r.end, r.text, r.speaker) for r in recs] == [
        ("u1", 0.0, 0.5, "one two", "s1"), ("u2", 0.5, None, "three", "s1"),
        ("u3", 1.0, 2.0, None, "s2"),
    ]  # fmt: skip
    assert recs[2].path == str(tmp_path / "wav" / "sub" / "b.flac")
    inputs.fill_durations(recs)
    assert [r.duration for r in recs] == [0.5, 0.5, 1.0]

    globbed = inputs.read_records(str(tmp_path / "wav" / "**" / "*.flac"))
    assert [r.key for r in globbed] == ["sub/b"]  # relative to the glob's fixed part

    (kaldi / "wav.scp").write_text("recA sox a.wav -t wav - |\n")
    with pytest.raises(ValueError, match="piped command"):
        inputs.read_records(kaldi)
    manifest.write_text(
        json.dumps({"path": "wav/a.wav"}) + "\n" + json.dumps({"path": "wav/a.wav"}) + "\n"
    )
    with pytest.raises(ValueError, match=r"1 duplicate keys \('wav/a'\)"):
        inputs.read_records(manifest)
    with pytest.raises(ValueError, match="no such file"):
        inputs.read_records(tmp_path / "nothing")


def test_kaldi_segments_tokenized_with_speakers(tiny, tmp_path):
    """Segments of one file, by key and speaker through TokenSource; codes of each segment
    equal the segment encoded alone (clip lengths shared with the other tests' shapes)."""
    rng = np.random.default_rng(4)
    wav = speechlike(3.0, rng)
    write(str(tmp_path / "rec.wav"), wav)
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"rec {tmp_path}/rec.wav\n")
    (kaldi / "segments").write_text("a rec 0.0 1.0\nb rec 1.0 1.7\nc rec 2.0 3.0\n")
    (kaldi / "utt2spk").write_text("a s1\nb s2\nc s1\n")
    (kaldi / "text").write_text("a first\nb second\nc third\n")
    summary = job.tokenize(tiny["dir"], kaldi, tmp_path / "out", progress=False)
    assert summary["records"] == 3 and summary["errors"] == 0
    source = TokenSource(tmp_path / "out")
    assert source.keys_of_speaker("s1") == ["a", "c"] and source.indices_of_speaker("s2") == [1]
    for key, (start, end) in {"a": (0.0, 1.0), "b": (1.0, 1.7), "c": (2.0, 3.0)}.items():
        i = source.index_of(key)
        alone = tiny["encode"](tiny["variables"], wav[round(start * RATE) : round(end * RATE)])
        differ = np.sum(np.any(source[i]["codes"] != np.asarray(alone), axis=-1))
        assert differ <= 1, key  # a near-tie at most (module docstring)
        assert source.info(i)["text"] == {"a": "first", "b": "second", "c": "third"}[key]
    with pytest.raises(ValueError, match="holds a job started with"):
        job.tokenize(tiny["dir"], kaldi, tmp_path / "out", progress=False, max_batch=3)


def test_arrayrecord_corpus_input(tiny, tmp_path):
    """The ArrayRecord corpora that data/corpora.py writes: keys are the records' ids, speakers
    their speaker ids; codes equal each clip encoded alone."""
    from hificodec_jax.data import corpora

    rng = np.random.default_rng(5)
    for spk in ("alice", "bob"):
        for i, seconds in enumerate((1.0, 0.7)):
            write(
                str(tmp_path / "corpus" / spk / f"{spk}_{i}.wav"),
                speechlike(seconds, rng),
                subtype="PCM_16",
            )
    data_dir = corpora.prepare_corpus(
        "generic", tmp_path / "corpus", tmp_path / "prepared", sample_rate=RATE,
        held_out_fraction=0.0, num_workers=1,
    )  # fmt: skip
    recs = inputs.read_records(tmp_path / "prepared")
    assert [(r.key, r.speaker) for r in recs] == [
        ("alice/alice_0", "alice"), ("alice/alice_1", "alice"), ("bob/bob_0", "bob"),
        ("bob/bob_1", "bob"),
    ]  # fmt: skip
    summary = job.tokenize(tiny["dir"], tmp_path / "prepared", tmp_path / "out", progress=False)
    assert summary["records"] == 4 and summary["errors"] == 0
    source = TokenSource(tmp_path / "out")
    assert source.keys_of_speaker("bob") == ["bob/bob_0", "bob/bob_1"]
    from hificodec_jax.data.input_pipeline import ArrayRecordAudioSource

    audio = ArrayRecordAudioSource(data_dir, "train")
    for i in range(len(audio)):
        key = audio.record(i)["id"]
        alone = np.asarray(tiny["encode"](tiny["variables"], audio[i]))
        assert np.sum(np.any(source[source.index_of(key)]["codes"] != alone, axis=-1)) <= 1, key
