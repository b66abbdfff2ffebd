"""Corpus preparation (tiny fake LibriTTS / VCTK / AISHELL / generic copies) and the demo corpus."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import soundfile as sf

from hificodec_jax import cli
from hificodec_jax.audio import audio_io
from hificodec_jax.cli import prepare as prepare_command
from hificodec_jax.data import corpora, input_pipeline

SR = 16000
FAST = dict(num_threads=2, prefetch_buffer_size=4)


def _write(path, rate, seconds, seed, channels=1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    x = 0.3 * np.sin(2 * np.pi * (120 + 10 * seed) * np.arange(n) / rate)
    x = (x + 0.05 * rng.standard_normal(n)).astype(np.float32)
    sf.write(path, np.stack([x] * channels, -1) if channels > 1 else x, rate)
    return n / rate


def _fake_libritts(root):
    durations = {}
    for subset in ("train-clean-100", "dev-clean"):
        for s, spk in enumerate(("19", "26", "32", "40", "78")):
            for u in range(2):
                uid = f"{spk}_{100 + s}_{subset[:3]}{u}_000{u}"
                path = os.path.join(root, subset, spk, str(100 + s), f"{uid}.wav")
                durations[uid] = (spk, subset, _write(path, 24000, 0.3 + 0.1 * u, s * 2 + u))
    return durations


def _fake_vctk(root, old_layout=False):
    durations = {}
    for s, spk in enumerate(("p225", "p226", "p227", "p228")):
        for u in range(1, 3):
            uid = f"{spk}_{u:03d}"
            if old_layout:
                path = os.path.join(root, "wav48", spk, f"{uid}.wav")
            else:
                path = os.path.join(root, "wav48_silence_trimmed", spk, f"{uid}_mic1.flac")
                _write(path.replace("mic1", "mic2"), 48000, 0.2, 99)  # other mic: excluded
            durations[uid] = (spk, "", _write(path, 48000, 0.25 * u, s + u, channels=1))
    return durations


def _fake_aishell(root):
    durations = {}
    for subset, spks in (("train", ("S0002", "S0003", "S0004")), ("dev", ("S0724",))):
        for s, spk in enumerate(spks):
            for u in range(2):
                uid = f"BAC009{spk}W{u:04d}"
                path = os.path.join(root, "data_aishell", "wav", subset, spk, f"{uid}.wav")
                durations[uid] = (spk, subset, _write(path, 16000, 0.3, s + u))
    return durations


def _fake_generic(root):
    durations = {}
    for s, spk in enumerate(("alice", "bob", "carol")):
        for u in range(2):
            ext = "flac" if u else "wav"
            rate = (22050, 44100)[u]
            uid = f"{spk}/take{u}"
            durations[uid] = (
                spk,
                "",
                _write(os.path.join(root, f"{uid}.{ext}"), rate, 0.3, s, u + 1),
            )
    (root / "bob" / "broken.wav").write_bytes(b"RIFF not really a wav file")  # skipped
    return durations


LAYOUTS = {
    "libritts": _fake_libritts,
    "vctk": _fake_vctk,
    "aishell": _fake_aishell,
    "generic": _fake_generic,
}


def _read_split(data_dir, split):
    src = input_pipeline.ArrayRecordAudioSource(data_dir, split)
    return src, {r["id"]: r for r in (src.record(i) for i in range(len(src)))}


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_prepare_corpus_layouts(kind, tmp_path):
    durations = LAYOUTS[kind](tmp_path / "corpus")
    data_dir = corpora.prepare_corpus(
        kind,
        tmp_path / "corpus",
        tmp_path / "out",
        sample_rate=SR,
        held_out_fraction=0.3,
        num_workers=2,
    )
    assert data_dir.endswith(os.path.join("local_speech", f"{kind}_{SR}", "1.0.0"))
    train_src, train = _read_split(data_dir, "train")
    val_src, val = _read_split(data_dir, "validation")
    assert train and val and not set(train) & set(val)
    assert set(train) | set(val) == set(durations)
    # whole speakers are held out
    assert not {r["speaker_id"] for r in train.values()} & {r["speaker_id"] for r in val.values()}
    assert train_src.sample_rate == val_src.sample_rate == SR
    for uid, rec in {**train, **val}.items():
        speaker, _, seconds = durations[uid]
        assert rec["speaker_id"] == speaker
        assert rec["audio"].dtype == np.int16
        assert abs(rec["duration"] - seconds) < 1e-3
        assert abs(rec["audio"].shape[0] - seconds * SR) <= 1
    wav = train_src[0]
    assert wav.dtype == np.float32 and 0.2 < np.max(np.abs(wav)) < 0.5
    # the split is a pure function of the speaker ids
    held = audio_io.held_out_groups([d[0] for d in durations.values()], 0.3, 0)
    assert {r["speaker_id"] for r in val.values()} == held
    batch = next(
        iter(
            input_pipeline.make_train_dataset(
                train_src,
                segment_size=2000,
                batch_size=2,
                seed=0,
                process_index=0,
                process_count=1,
                **FAST,
            )
        )
    )
    assert batch["wav"].shape == (2, 2000) and batch["lengths"].dtype == np.int32


def test_vctk_old_layout_libritts_subsets_and_reuse(tmp_path, capsys):
    durations = _fake_vctk(tmp_path / "vctk", old_layout=True)
    utts = corpora.scan_corpus("vctk", tmp_path / "vctk")
    assert {u.id for u in utts} == set(durations)
    assert {u.speaker for u in utts} == {"p225", "p226", "p227", "p228"}

    lib = _fake_libritts(tmp_path / "libritts")
    utts = corpora.scan_corpus("libritts", tmp_path / "libritts", subsets=["train-clean-100"])
    assert {u.id for u in utts} == {k for k, v in lib.items() if v[1] == "train-clean-100"}
    train, held = corpora.split_utterances(utts, 0.02, seed=0)
    assert len({u.speaker for u in held}) == 1 and train  # at least one speaker held out
    train_u, held_u = corpora.split_utterances(utts, 0.2, split_by="utterance")
    assert held_u and {u.speaker for u in held_u} & {u.speaker for u in train_u}

    out = tmp_path / "out"
    assert prepare_command.KINDS == corpora.KINDS  # repeated for a light --help
    assert (
        cli.main(
            [
                "prepare",
                "--kind",
                "libritts",
                "--root",
                str(tmp_path / "libritts"),
                "--out",
                str(out),
                "--sample_rate",
                "24000",
                "--subsets",
                "dev-clean",
                "--num_workers",
                "1",
            ]
        )
        == 0
    )
    data_dir = capsys.readouterr().out.strip().splitlines()[-1]  # TFDS prints its own lines first
    src = input_pipeline.ArrayRecordAudioSource(out, "train")  # found below out/
    assert src.sample_rate == 24000 and src.data_dir == data_dir
    assert all(src.record(i)["id"].split("_")[2].startswith("dev") for i in range(len(src)))
    resampled = input_pipeline.ArrayRecordAudioSource(data_dir, "train", sample_rate=SR)
    assert abs(resampled[0].shape[0] - src[0].shape[0] * 2 / 3) <= 1
    mtime = os.path.getmtime(os.path.join(data_dir, "dataset_info.json"))
    again = corpora.prepare_corpus(
        "libritts", tmp_path / "libritts", out, sample_rate=24000, subsets=["dev-clean"]
    )
    assert (
        again == data_dir and os.path.getmtime(os.path.join(data_dir, "dataset_info.json")) == mtime
    )

    with pytest.raises(FileNotFoundError):
        corpora.scan_corpus("aishell", tmp_path / "vctk" / "missing")


@pytest.mark.skipif(
    importlib.util.find_spec("espeakng_loader") is None, reason="espeakng-loader not installed"
)
def test_demo_corpus_speech(tmp_path):
    from hificodec_jax.data import demo_corpus

    directory = demo_corpus.ensure_demo_corpus(tmp_path / "demo", SR, num_utterances=4)
    files = audio_io.list_audio_files(directory)
    assert len(files) == 4 and len({os.path.dirname(f) for f in files}) == 4  # 4 speakers
    for f in files:
        info = sf.info(f)
        assert info.samplerate == SR and info.channels == 1 and info.duration > 1.0
        wav, _ = sf.read(f, dtype="float32")
        assert audio_io.audio_problem(wav, SR) is None
        rms = np.sqrt(np.mean(wav**2))
        assert 0.01 < rms < 0.5
        frames = wav[: len(wav) // 320 * 320].reshape(-1, 320)
        energy = np.sqrt(np.mean(frames**2, axis=1))
        assert np.mean(energy > 0.1 * energy.max()) > 0.3  # speech, not a click
    mtimes = [os.path.getmtime(f) for f in files]
    assert demo_corpus.ensure_demo_corpus(tmp_path / "demo", SR, num_utterances=4) == directory
    assert [os.path.getmtime(f) for f in files] == mtimes  # idempotent
    assert input_pipeline.split_files(files)[1]


def test_demo_corpus_without_espeak_says_what_to_do(tmp_path, monkeypatch):
    import sys

    from hificodec_jax.data import demo_corpus

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    monkeypatch.setattr(demo_corpus, "_ENGINE", None)
    with pytest.raises(RuntimeError, match="--config.data.dir"):
        demo_corpus.ensure_demo_corpus(tmp_path / "demo", SR, num_utterances=2)
