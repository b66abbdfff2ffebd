"""grain input pipeline: decoding, bad-file skipping, determinism, resume, per-process shards."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO

from hificodec_jax.audio import audio_io
from hificodec_jax.data import input_pipeline

SR = 16000
SEG = 4000
FAST = dict(num_threads=2, prefetch_buffer_size=4)

GOOD = {  # name: (file rate, channels, seconds)
    "spk1/a.wav": (16000, 1, 1.5),
    "spk1/b.wav": (44100, 2, 0.8),
    "spk2/c.flac": (22050, 1, 1.2),
    "spk2/d.ogg": (24000, 1, 1.0),
    "spk3/short.wav": (16000, 1, 0.15),  # shorter than a segment: zero padded
}
BAD = ("bad/corrupt.wav", "bad/silent.wav", "bad/nan.wav", "bad/tiny.wav")


def _tone(rate: int, channels: int, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.4 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    return np.stack([x * (c + 1) / channels for c in range(channels)], -1).astype(np.float32)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for seed, (name, (rate, ch, sec)) in enumerate(GOOD.items()):
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        sf.write(root / name, _tone(rate, ch, sec, seed), rate)
    os.makedirs(root / "bad")
    (root / "bad/corrupt.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    sf.write(root / "bad/silent.wav", np.zeros(SR, np.float32), SR)
    nan = _tone(SR, 1, 1.0, 9)
    nan[100:200] = np.nan
    sf.write(root / "bad/nan.wav", nan, SR, subtype="FLOAT")
    sf.write(root / "bad/tiny.wav", _tone(SR, 1, 0.01, 3), SR)  # 160 samples < SEG // 10
    (root / "notes.txt").write_text("not audio")
    return root


def _train(source, seed=0, batch_size=3, **kw):
    kw = {"process_index": 0, "process_count": 1, **FAST, **kw}
    return input_pipeline.make_train_dataset(
        source, segment_size=SEG, batch_size=batch_size, seed=seed, **kw
    )


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(a, b):
    return all(
        np.array_equal(x["wav"], y["wav"]) and np.array_equal(x["lengths"], y["lengths"])
        for x, y in zip(a, b, strict=True)
    )


def test_file_source_decodes_mixes_and_resamples(audio_dir):
    src = input_pipeline.AudioFileSource(audio_dir, SR)
    assert len(src) == len(GOOD) + len(BAD)  # notes.txt ignored
    by_name = {os.path.relpath(src.name(i), audio_dir): i for i in range(len(src))}
    for name, (_, _, sec) in GOOD.items():
        wav = src[by_name[name]]
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert abs(wav.shape[0] - sec * SR) <= 1, name
    # stereo is averaged: channel c holds x * (c + 1) / 2 -> mean 0.75 x
    b = src[by_name["spk1/b.wav"]]
    ref = audio_io.resample(_tone(44100, 2, 0.8, 1).mean(-1), 44100, SR)
    np.testing.assert_allclose(b, ref, atol=1e-4)
    with pytest.raises(Exception):  # noqa: B017  (whatever soundfile raises)
        src[by_name["bad/corrupt.wav"]]
    files = input_pipeline.list_audio_files([audio_dir / "spk1", audio_dir / "spk2/c.flac"])
    assert [os.path.basename(f) for f in files] == ["a.wav", "b.wav", "c.flac"]
    os.makedirs(audio_dir / "empty", exist_ok=True)
    with pytest.raises(FileNotFoundError, match="no audio files"):
        input_pipeline.AudioFileSource(audio_dir / "empty", SR)
    empty = input_pipeline.AudioFileSource([], SR)
    with pytest.raises(ValueError, match="no training data"):
        _train(empty)
    assert list(input_pipeline.make_eval_dataset(empty, max_seconds=1.0)) == []


def test_batches_skip_bad_files_and_keep_going(audio_dir):
    ledger = input_pipeline.BadItems()
    src = input_pipeline.AudioFileSource(audio_dir, SR)
    it = iter(_train(src, bad_items=ledger))
    batches = _take(it, 8)  # 24 items: several epochs of the 5 good files
    short_len = int(GOOD["spk3/short.wav"][2] * SR)
    for b in batches:
        assert set(b) == {"wav", "lengths"}
        assert b["wav"].shape == (3, SEG) and b["wav"].dtype == np.float32
        assert b["lengths"].shape == (3,) and b["lengths"].dtype == np.int32
        assert np.all(np.isfinite(b["wav"]))
        for w, n in zip(b["wav"], b["lengths"], strict=True):
            assert n in (SEG, short_len)
            assert np.all(w[n:] == 0) and np.max(np.abs(w[:n])) > 0.01
    lengths = np.concatenate([b["lengths"] for b in batches])
    assert np.sum(lengths == short_len) >= 3  # the short clip, zero padded, every epoch
    stats = {
        os.path.relpath(k, audio_dir): v
        for k, v in ledger.stats().items()
        if k.startswith(str(audio_dir))
    }
    assert set(stats) == set(BAD)
    assert stats["bad/corrupt.wav"].startswith("undecodable")
    assert stats["bad/silent.wav"].startswith("silent")
    assert stats["bad/nan.wav"].startswith("non-finite")
    assert stats["bad/tiny.wav"].startswith("too short")
    assert ledger.metrics()["data/bad_files"] == len(BAD)


_COLD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hificodec_jax.data import input_pipeline
    assert "soundfile" not in sys.modules  # the cffi binding is fresh
    src = input_pipeline.AudioFileSource(sys.argv[1], {sr})
    ds = input_pipeline.make_train_dataset(
        src, segment_size={seg}, batch_size=3, seed=0, process_index=0, process_count=1,
        num_threads=8, prefetch_buffer_size=16,
    )
    it = iter(ds)
    batches = [next(it) for _ in range(8)]
    np.savez(sys.argv[2], *[b["wav"] for b in batches])
    """
)


def test_threads_start_on_a_fresh_soundfile_binding(audio_dir, tmp_path):
    """A new process whose first soundfile use is the pipeline's eight read threads (cffi
    builds the binding's C types on first use: the pipeline does it in the main thread
    first) decodes the same batches as this process."""
    out = tmp_path / "batches.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    code = _COLD.format(sr=SR, seg=SEG)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(audio_dir), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    src = input_pipeline.AudioFileSource(audio_dir, SR)
    want = _take(iter(_train(src, num_threads=8, prefetch_buffer_size=16)), 8)
    with np.load(out) as z:
        got = [z[f"arr_{i}"] for i in range(8)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w["wav"])


def test_all_bad_raises_instead_of_hanging():
    src = [np.zeros(SEG, np.float32), np.full(SEG, np.inf, np.float32)]
    with pytest.raises(RuntimeError, match="all 2 items"):
        next(iter(_train(src, batch_size=1)))


def _numbered(n, length=SEG + 500):
    """Item ``i`` is a constant ``(i + 1) / 100`` clip, so a crop tells which item it came from."""
    return [np.full(length, (i + 1) / 100, np.float32) for i in range(n)]


def _ids(batches):
    return [int(round(w[0] * 100)) - 1 for b in batches for w in b["wav"]]


def test_deterministic_given_seed(audio_dir):
    src = input_pipeline.AudioFileSource(audio_dir, SR)
    a, b, c = (_take(iter(_train(src, seed=s)), 3) for s in (7, 7, 8))
    assert _same(a, b)
    assert not _same(a, c)
    # every epoch is a new permutation of all items
    ids = _ids(_take(iter(_train(_numbered(6), seed=3, batch_size=2)), 6))
    assert sorted(ids[:6]) == sorted(ids[6:12]) == list(range(6))
    assert ids[:6] != ids[6:12]


def test_get_state_set_state_resumes_on_the_next_batch(audio_dir):
    src = input_pipeline.AudioFileSource(audio_dir, SR)
    ds = _train(src, seed=1)
    it = iter(ds)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 3)
    resumed = iter(_train(src, seed=1))
    resumed.set_state(state)
    assert _same(_take(resumed, 3), expected)


def test_process_shards_are_disjoint_and_cover_everything():
    src = _numbered(7)
    seen = []
    for p in range(2):
        shard_len = len(range(7)[p::2])
        batches = _take(
            iter(_train(src, process_index=p, process_count=2, batch_size=1)), shard_len
        )
        ids = _ids(batches)
        assert len(set(ids)) == shard_len  # one epoch of the shard, no repeats
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(7))


def test_eval_dataset_whole_clips_in_order(audio_dir):
    src = input_pipeline.AudioFileSource(audio_dir, SR)
    clips = list(input_pipeline.make_eval_dataset(src, max_seconds=1.0, hop=320))
    assert len(clips) == len(GOOD)  # bad ones skipped
    for clip, (_, _, sec) in zip(clips, GOOD.values(), strict=True):  # sorted file order
        assert clip["wav"].shape == (1, 16000) and clip["lengths"].dtype == np.int32
        assert abs(int(clip["lengths"][0]) - min(sec, 1.0) * SR) <= 1
    free = list(input_pipeline.make_eval_dataset(src, max_seconds=1.0, hop=320, fixed_length=False))
    assert [c["wav"].shape[1] for c in free] == [
        -(-int(c["lengths"][0]) // 320) * 320 for c in clips
    ]


def test_split_files_is_deterministic_and_stable():
    files = [f"/data/spk{i % 5}/utt{i:03d}.wav" for i in range(300)]
    train, held = input_pipeline.split_files(files, held_out_fraction=0.1)
    assert sorted(train + held) == sorted(files) and not set(train) & set(held)
    assert 10 <= len(held) <= 50
    assert input_pipeline.split_files(files, 0.1) == (train, held)
    # moving the corpus or adding files does not move a file across the split
    moved = [f.replace("/data/", "/elsewhere/") for f in files[:150]]
    assert [f.replace("/data/", "/elsewhere/") for f in held if f in files[:150]] == [
        f for f in input_pipeline.split_files(moved, 0.1)[1]
    ]
    assert input_pipeline.split_files(files[:2], 0.02)[1]  # at least one held out
