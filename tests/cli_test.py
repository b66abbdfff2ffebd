"""The ``hificodec-jax`` command line on a tiny model: encode/decode through .hfc files equals
the in-memory codec, file sizes match the nominal bitrate, bad input fails clearly."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import soundfile as sf
from helpers import config, fast_init

import hificodec_jax
from hificodec_jax import cli
from hificodec_jax.codec import model_io
from hificodec_jax.codec.bitstream import CRC_SIZE, HEADER_SIZE, read_hfc
from hificodec_jax.data.demo_audio import synthetic_speech


@functools.cache
def _model_dir(tmp_root: str, seed: int = 0) -> str:
    cfg = config("tiny")
    codec = hificodec_jax.build_codec(cfg)
    return model_io.save_model(
        os.path.join(tmp_root, f"model{seed}"), cfg, fast_init(codec, 400, seed)
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _model_dir(str(tmp_path_factory.mktemp("models")))


def _wav_file(path, seconds=1.0, sr=16000, channels=1):
    wav = synthetic_speech(sr, seconds)
    if channels > 1:
        wav = np.stack([wav, 0.5 * wav], axis=1)
    sf.write(path, wav, sr)
    return wav


def test_encode_decode_files_equal_in_memory_codec(model_dir, tmp_path):
    wav = _wav_file(tmp_path / "a.wav", seconds=1.0)
    hfc, out = tmp_path / "a.hfc", tmp_path / "a_out.wav"
    assert (
        cli.main(["encode", str(tmp_path / "a.wav"), "--model", model_dir, "--out", str(hfc)]) == 0
    )
    assert cli.main(["decode", str(hfc), "--model", model_dir, "--out", str(out)]) == 0
    codec, variables = model_io.load(model_dir)
    expected = np.asarray(codec.apply(variables, wav[None]).wav_hat[0])
    got, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and got.shape == expected.shape == (16000,)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # Size: 400 frames/s x 4 codes x 6 bits = 9600 bit/s -> 1 s = 1200 bytes + header + CRC.
    assert hificodec_jax.bitrate(config("tiny")) == 9600
    assert os.path.getsize(hfc) == 1200 + HEADER_SIZE + CRC_SIZE


def test_exact_encoding_of_a_long_file_equals_whole_file_codes(model_dir, tmp_path):
    # 22 s: three default 10 s windows. --exact uses whole-file GroupNorm statistics (without
    # it, window statistics flip ~1.5 % of the frames here).
    wav = _wav_file(tmp_path / "long.wav", seconds=22.0)
    hfc = tmp_path / "long.hfc"
    args = ["encode", str(tmp_path / "long.wav"), "--model", model_dir, "--out", str(hfc)]
    assert cli.main([*args, "--exact", "--no-progress"]) == 0
    codes, _ = read_hfc(hfc)
    codec, variables = model_io.load(model_dir)
    whole = np.asarray(codec.apply(variables, wav[None], method="encode")[0])
    assert codes.shape == whole.shape
    assert (codes == whole).all(-1).mean() >= 0.995  # only float-rounding near-ties may flip


def test_levels_halve_the_size_and_stereo_other_rate_is_converted(model_dir, tmp_path, capsys):
    _wav_file(tmp_path / "s.wav", seconds=1.0, sr=22050, channels=2)
    hfc = tmp_path / "s.hfc"
    cli.main(
        [
            "encode",
            str(tmp_path / "s.wav"),
            "--model",
            model_dir,
            "--out",
            str(hfc),
            "--levels",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert "mixed down to mono" in err and "resampled from 22050 Hz" in err
    assert os.path.getsize(hfc) == 600 + HEADER_SIZE + CRC_SIZE
    cli.main(["decode", str(hfc), "--model", model_dir, "--out", str(tmp_path / "s_out.wav")])
    assert sf.info(tmp_path / "s_out.wav").frames == 16000


def test_batch_mode_over_a_directory(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("x", "y"):
        _wav_file(src / f"{name}.wav", seconds=0.5)
    cli.main(["roundtrip", str(src), "--model", model_dir, "--out", str(tmp_path / "out") + os.sep])
    assert sorted(os.listdir(tmp_path / "out")) == ["x.wav", "y.wav"]


def test_damaged_and_foreign_bitstreams_are_refused(model_dir, tmp_path):
    _wav_file(tmp_path / "a.wav", seconds=0.5)
    hfc = tmp_path / "a.hfc"
    cli.main(["encode", str(tmp_path / "a.wav"), "--model", model_dir, "--out", str(hfc)])
    data = bytearray(hfc.read_bytes())
    data[HEADER_SIZE + 3] ^= 0x10
    (tmp_path / "bad.hfc").write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="damaged"):
        cli.main(
            [
                "decode",
                str(tmp_path / "bad.hfc"),
                "--model",
                model_dir,
                "--out",
                str(tmp_path / "o.wav"),
            ]
        )
    (tmp_path / "trunc.hfc").write_bytes(hfc.read_bytes()[:40])
    with pytest.raises(SystemExit, match="truncated"):
        cli.main(
            [
                "decode",
                str(tmp_path / "trunc.hfc"),
                "--model",
                model_dir,
                "--out",
                str(tmp_path / "o.wav"),
            ]
        )
    other = _model_dir(str(tmp_path), seed=1)
    with pytest.raises(SystemExit, match="different model"):
        cli.main(["decode", str(hfc), "--model", other, "--out", str(tmp_path / "o.wav")])
    with pytest.raises(SystemExit, match="cannot read audio"):
        cli.main(["encode", str(hfc), "--model", model_dir, "--out", str(tmp_path / "x.hfc")])


def test_audio_with_nan_samples_is_refused_by_name(model_dir, tmp_path):
    wav = synthetic_speech(16000, 0.5)
    wav[[700, 900, 901]] = [np.nan, np.inf, np.nan]
    sf.write(tmp_path / "nan.wav", wav, 16000, subtype="FLOAT")
    out = tmp_path / "nan.hfc"
    with pytest.raises(
        SystemExit, match=r"nan\.wav' contains NaN or .* \(3, the first at index 700\)"
    ):
        cli.main(["encode", str(tmp_path / "nan.wav"), "--model", model_dir, "--out", str(out)])
    assert not out.exists()


def test_module_entry_point_prints_help():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "hificodec_jax.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for sub in ("convert", "encode", "decode", "roundtrip", "evaluate"):
        assert sub in out.stdout
