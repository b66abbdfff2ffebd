"""The ``hificodec-jax`` command line on a tiny model: encode/decode through .hfc files equals
the in-memory codec, file sizes match the nominal bitrate, bad input fails clearly."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO, config, fast_init

import hificodec_jax
from hificodec_jax import cli, loading
from hificodec_jax.audio.audio_io import float_to_int16, resample
from hificodec_jax.cli import common
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.inference import files
from hificodec_jax.inference.bitstream import CRC_SIZE, HEADER_SIZE, HEADER_SIZES, read_hfc
from hificodec_jax.model_dir import save_model


@functools.cache
def _model_dir(tmp_root: str, seed: int = 0) -> str:
    cfg = config("tiny")
    codec = hificodec_jax.build_codec(cfg)
    return save_model(os.path.join(tmp_root, f"model{seed}"), cfg, fast_init(codec, 400, seed))


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
    codec, variables = loading.load(model_dir)
    expected = np.asarray(codec.apply(variables, wav[None]).wav_hat[0])
    got, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and got.shape == expected.shape == (16000,)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert sf.info(out).subtype == "PCM_16"  # was float32 before 16-bit PCM became the default
    # Size: 400 frames/s x 4 codes x 6 bits = 9600 bit/s -> 1 s = 1200 bytes + header + CRC.
    assert hificodec_jax.bitrate(config("tiny")) == 9600
    assert os.path.getsize(hfc) == 1200 + HEADER_SIZE + CRC_SIZE


def test_exact_encoding_of_a_long_file_equals_whole_file_codes(model_dir, tmp_path):
    # 22 s: three default 10 s windows. --exact uses whole-file GroupNorm statistics (without
    # it, window statistics flip some frames' codes).
    wav = _wav_file(tmp_path / "long.wav", seconds=22.0)
    hfc = tmp_path / "long.hfc"
    args = ["encode", str(tmp_path / "long.wav"), "--model", model_dir, "--out", str(hfc)]
    assert cli.main([*args, "--exact", "--no-progress"]) == 0
    codes, _ = read_hfc(hfc)
    codec, variables = loading.load(model_dir)
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
    # At the model's rate the decoded file has the input's length there; by default (not
    # kept from before the input's rate was stored) it comes back at 22050 Hz.
    out = ["--model", model_dir, "--out", str(tmp_path / "s_out.wav")]
    cli.main(["decode", str(hfc), *out, "--model-rate"])
    assert sf.info(tmp_path / "s_out.wav").frames == 16000
    cli.main(["decode", str(hfc), *out, "--overwrite"])
    info = sf.info(tmp_path / "s_out.wav")
    assert (info.samplerate, info.frames, info.subtype) == (22050, 22050, "PCM_16")


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
    with pytest.raises(SystemExit, match=r"a\.hfc: a \.hfc bitstream, not audio") as info:
        cli.main(["encode", str(hfc), "--model", model_dir, "--out", str(tmp_path / "x.hfc")])
    assert info.value.code == 2


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


def _fail(argv, status=2):
    """The CliError of ``cli.main(argv)``: its exit status and message."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == status, str(info.value)
    return str(info.value)


def test_empty_inputs_are_an_error_and_create_nothing(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not audio")
    out = tmp_path / "x.hfc"
    model = ["--model", model_dir, "--out", str(out)]
    assert "no files (.wav" in _fail(["encode", str(tmp_path / "empty"), *model])
    assert "no files match" in _fail(["encode", str(tmp_path / "*.flac"), *model])
    assert "no such file or directory" in _fail(["encode", str(tmp_path / "nope.wav"), *model])
    assert "no files (.hfc)" in _fail(["decode", str(tmp_path / "empty"), *model])
    assert "hificodec-jax encode: no such file or directory" in capsys.readouterr().err
    assert not out.exists()
    _wav_file(tmp_path / "empty" / "a.wav", seconds=0.2)
    # A directory input writes a directory: a file-like --out is refused before it is created.
    assert "looks like a file name" in _fail(["encode", str(tmp_path / "empty"), *model])
    assert not out.exists()


def test_decode_restores_length_and_rate_as_16_bit_pcm(model_dir, tmp_path):
    codec, variables = loading.load(model_dir)
    # 8 kHz, 0.3 s + 13 samples: not a whole number of frames at the model's rate either.
    wav = synthetic_speech(8000, 0.3)
    wav = np.concatenate([wav, wav[:13]])
    sf.write(tmp_path / "n.wav", wav, 8000, subtype="FLOAT")
    hfc, out = tmp_path / "n.hfc", tmp_path / "n_out.wav"
    cli.main(["encode", str(tmp_path / "n.wav"), "--model", model_dir, "--out", str(hfc)])
    codes, header = read_hfc(hfc)
    assert (header.original_sample_rate, header.original_length) == (8000, 2413)
    assert header.sample_rate == 16000 and header.num_frames == 4826 // 40
    cli.main(["decode", str(hfc), "--model", model_dir, "--out", str(out)])
    info = sf.info(out)
    assert (info.samplerate, info.frames, info.subtype) == (8000, 2413, "PCM_16")
    decoded = np.asarray(codec.apply(variables, codes, method="decode"))  # 4800 samples
    decoded = np.pad(decoded, (0, 4826 - 4800))  # the partial last frame comes back silent
    expected = resample(decoded, 16000, 8000)[:2413]
    got, _ = sf.read(out, dtype="int16")
    assert np.abs(got.astype(int) - float_to_int16(expected)).max() <= 2
    cli.main(
        ["decode", str(hfc), "--model", model_dir, "--out", str(out), "--float", "--overwrite"]
    )
    got, sr = sf.read(out, dtype="float32")
    assert sf.info(out).subtype == "FLOAT" and sr == 8000
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # At the model's rate: the input's length there (4826), its last 26 samples silent.
    cli.main(
        ["decode", str(hfc), "--model", model_dir, "--out", str(out), "--model-rate", "--overwrite"]
    )
    got, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and got.shape == (4826,) and not got[4800:].any()
    np.testing.assert_allclose(got[:4800], decoded[:4800], atol=1e-4)


def test_version_1_bitstream_still_decodes(model_dir, tmp_path):
    _wav_file(tmp_path / "a.wav", seconds=0.3)
    cli.main(
        ["encode", str(tmp_path / "a.wav"), "--model", model_dir, "--out", str(tmp_path / "a.hfc")]
    )
    data = (tmp_path / "a.hfc").read_bytes()
    # The same stream as format version 1 wrote it: no original_sample_rate (model-rate input).
    body = data[:4] + b"\x01" + data[5 : HEADER_SIZES[1]] + data[HEADER_SIZES[2] : -CRC_SIZE]
    (tmp_path / "old.hfc").write_bytes(body + zlib.crc32(body).to_bytes(4, "little"))
    for name in ("a", "old"):
        args = ["decode", str(tmp_path / f"{name}.hfc"), "--model", model_dir]
        assert cli.main([*args, "--out", str(tmp_path / f"{name}_out.wav")]) == 0
    new, sr_new = sf.read(tmp_path / "a_out.wav", dtype="int16")
    old, sr_old = sf.read(tmp_path / "old_out.wav", dtype="int16")
    assert sr_old == sr_new == 16000 and old.shape == new.shape == (4800,)
    np.testing.assert_array_equal(old, new)


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


def test_errors_name_the_file(model_dir, tmp_path):
    _wav_file(tmp_path / "a.wav", seconds=0.3)
    hfc = tmp_path / "a.hfc"
    cli.main(["encode", str(tmp_path / "a.wav"), "--model", model_dir, "--out", str(hfc)])
    (tmp_path / "cut.hfc").write_bytes(hfc.read_bytes()[:100])
    (tmp_path / "wav.hfc").write_bytes((tmp_path / "a.wav").read_bytes())
    out = ["--model", model_dir, "--out", str(tmp_path / "o.wav")]
    message = _fail(["decode", str(tmp_path / "cut.hfc"), *out])  # a bad input: status 2
    assert message.startswith(f"{tmp_path / 'cut.hfc'}: truncated .hfc file (100 bytes")
    message = _fail(["decode", str(tmp_path / "wav.hfc"), *out])
    assert message.startswith(f"{tmp_path / 'wav.hfc'}: not a .hfc file (magic b'RIFF'")
    message = _fail(["decode", str(tmp_path / "gone.hfc"), *out])
    assert message == f"no such file or directory: {tmp_path / 'gone.hfc'}"
    # A directory where --out's parent should be: the error names it, no temp file.
    (tmp_path / "blocker").write_text("")
    target = tmp_path / "blocker" / "x.hfc"
    message = _fail(
        ["encode", str(tmp_path / "a.wav"), "--model", model_dir, "--out", str(target)], 1
    )
    assert str(tmp_path / "blocker") in message and ".tmp" not in message
    assert not (tmp_path / "o.wav").exists()


def test_no_overwrite_without_flag_and_relative_paths_kept(model_dir, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        _wav_file(tmp_path / "in" / sub / "x.wav", seconds=0.2 if sub == "a" else 0.3)
    out = tmp_path / "out"
    args = ["encode", str(tmp_path / "in"), "--model", model_dir, "--out", str(out)]
    assert cli.main(args) == 0
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*.hfc"))
    assert names == ["a/x.hfc", "b/x.hfc"]
    assert [read_hfc(out / n)[1].num_frames for n in names] == [80, 120]  # 0.2 s, 0.3 s
    before = {n: (out / n).read_bytes() for n in names}
    (out / "a" / "x.hfc").write_bytes(b"edited")
    assert "x.hfc exists (and 1 more); pass --overwrite" in _fail(args)
    assert (out / "a" / "x.hfc").read_bytes() == b"edited"
    assert cli.main([*args, "--overwrite"]) == 0
    assert {n: (out / n).read_bytes() for n in names} == before
    # Two inputs with one output name are refused before anything is written.
    same = [str(tmp_path / "in" / s / "x.wav") for s in ("a", "b")]
    message = _fail(["encode", *same, "--model", model_dir, "--out", str(tmp_path / "o2")])
    assert "would both be written to" in message and not (tmp_path / "o2").exists()
    single = ["encode", same[0], "--model", model_dir, "--out", str(out / "a" / "x.hfc")]
    assert "pass --overwrite" in _fail(single)


def test_levels_are_checked_before_any_audio_is_read(model_dir, tmp_path, capsys):
    # A file whose header reads but whose samples do not decode: only reading the audio finds it.
    (tmp_path / "bad.mp3").write_bytes(b"not audio at all")
    args = ["encode", str(tmp_path / "bad.mp3"), "--model", model_dir, "--out", str(tmp_path / "o")]
    assert _fail([*args, "--levels", "3"]) == "--levels 3: this model has levels 1 to 2"
    assert "cannot read audio" in _fail([*args, "--levels", "2"], status=1)
    with pytest.raises(SystemExit) as info:  # argparse refuses 0 before loading the model
        cli.main([*args, "--levels", "0"])
    assert info.value.code == 2 and "must be a whole number >= 1" in capsys.readouterr().err


def test_help_texts():
    parser = cli.make_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = [parser.format_help()]
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        texts.append(command.format_help())
    for text in texts:
        assert "``" not in text and not re.search(r":(func|class|mod|meth):", text), text
    assert "export" in sub.choices["encode"].format_help()


def test_short_files_of_a_directory_are_encoded_in_one_batch(model_dir, tmp_path, monkeypatch):
    lengths = (2000, 3000, 4440)  # 50, 75 and 111 frames (+ 0 samples)
    for i, n in enumerate(lengths):
        sf.write(tmp_path / f"{i}.wav", synthetic_speech(16000, 1.0)[:n], 16000, subtype="FLOAT")
    calls = []

    def counting(fn):
        def wrapped(codec, variables, items, **kw):
            calls.append((fn.__name__, len(items)))
            return fn(codec, variables, items, **kw)

        return wrapped

    def refuse(*args, **kwargs):
        raise AssertionError("short files must not be coded one window at a time")

    monkeypatch.setattr(files, "encode_batch", counting(files.encode_batch))
    monkeypatch.setattr(files, "decode_batch", counting(files.decode_batch))
    monkeypatch.setattr(files, "chunked_encode", refuse)
    monkeypatch.setattr(files, "chunked_decode", refuse)
    out = tmp_path / "codes"
    cli.main(["encode", *map(str, tmp_path.glob("*.wav")), "--model", model_dir, "--out", str(out)])
    assert calls == [("encode_batch", 3)]
    codec, variables = loading.load(model_dir)
    for i, n in enumerate(lengths):
        codes, header = read_hfc(out / f"{i}.hfc")
        wav, _ = sf.read(tmp_path / f"{i}.wav", dtype="float32")
        expected = np.asarray(codec.apply(variables, wav, method="encode"))
        assert codes.shape == (n // 40, 4) and header.original_length == n
        assert (codes == expected).all(-1).mean() >= 0.98  # float-rounding near-ties only
    cli.main(["decode", str(out), "--model", model_dir, "--out", str(tmp_path / "wavs")])
    assert calls == [("encode_batch", 3), ("decode_batch", 3)]
    assert [sf.info(tmp_path / "wavs" / f"{i}.wav").frames for i in range(3)] == list(lengths)


def test_cli_lists_inputs_with_the_shared_extensions(tmp_path):
    for name in ("a.opus", "b.m4a", "c.WAV", "d.txt", "e.hfc"):
        (tmp_path / name).write_bytes(b"")
    assert not hasattr(cli, "AUDIO_EXTENSIONS") and not hasattr(cli, "_expand")
    assert [rel for _, rel in common.inputs([str(tmp_path)], audio=True)] == [
        "a.opus", "b.m4a", "c.WAV",
    ]  # fmt: skip
    assert [rel for _, rel in common.inputs([str(tmp_path)], audio=False)] == ["e.hfc"]


# ------------------------------------------------------------------------------ issue 32


def test_one_bad_file_in_a_directory_does_not_cancel_the_others(model_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "good.wav", synthetic_speech(16000, 0.3), 16000)
    (src / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    nan = synthetic_speech(16000, 0.3)
    nan[5] = np.nan
    sf.write(src / "nan.wav", nan, 16000, subtype="FLOAT")
    out = tmp_path / "out"
    assert cli.main(["encode", str(src), "--model", model_dir, "--out", str(out)]) == 1
    assert sorted(os.listdir(out)) == ["good.hfc"]
    err = capsys.readouterr().err
    assert "broken.wav: unreadable audio" in err and "nan.wav' contains NaN" in err
    assert "2 of 3 inputs failed" in err
    # --strict: a bad input stops everything before the model loads
    strict = tmp_path / "strict"
    message = _fail(["encode", str(src), "--model", model_dir, "--out", str(strict), "--strict"])
    assert "broken.wav: unreadable audio" in message and not strict.exists()


def test_bad_inputs_fail_before_the_model_loads(tmp_path):
    # The model does not exist either: the input is reported first, so no model was read.
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "a.wav", synthetic_speech(16000, 0.2), 16000)
    no_model = str(tmp_path / "no-model")
    assert "empty.wav: empty file" in _fail(
        ["encode", str(tmp_path / "empty.wav"), "--model", no_model]
    )
    decode = ["decode", str(tmp_path / "a.wav"), "--model", no_model, "--out", str(tmp_path / "o")]
    assert "not a .hfc bitstream" in _fail(decode)
    assert "no-model" in _fail(["encode", str(tmp_path / "a.wav"), "--model", no_model])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["download", "no-such-model"], "unknown model name 'no-such-model'"),
        (
            ["convert", "/nonexistent.pth", "--config", "hificodec-16k-320d", "--out", "x"],
            "no checkpoint file",
        ),
        (["encode", "/nonexistent.wav", "--model", "m"], "no such file"),
        (["decode", "/nonexistent.hfc", "--model", "m"], "no such file"),
        (["roundtrip", "/nonexistent.wav", "--model", "m"], "no such file"),
        (["evaluate", "--model", "m", "--data", "/nonexistent"], "no such file"),
        (["export", "/nonexistent-model", "--out", "x"], "no model directory"),
        (["prepare", "--kind", "generic", "--root", "/nonexistent", "--out", "x"], "nonexistent"),
    ],
)
def test_every_subcommand_exits_2_on_a_bad_argument(argv, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert needle in _fail(argv, 2)


def test_version_and_every_subcommand_has_a_description(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and hificodec_jax.__version__ in capsys.readouterr().out
    parser = cli.make_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(cli.COMMANDS)
    for name, p in sub.choices.items():
        assert p.description and len(p.description) > 20, name
    assert "released model's name" in sub.choices["convert"].format_help()
    for name in cli.COMMANDS:  # the module docstring lists every subcommand
        assert f"    {name} " in cli.__doc__, name


def test_out_defaults_to_beside_the_input(model_dir, tmp_path):
    sf.write(tmp_path / "a.wav", synthetic_speech(16000, 0.3), 16000)
    assert cli.main(["encode", str(tmp_path / "a.wav"), "--model", model_dir]) == 0
    assert (tmp_path / "a.hfc").is_file()
    assert cli.main(["decode", str(tmp_path / "a.hfc"), "--model", model_dir, "--overwrite"]) == 0
    assert sf.info(tmp_path / "a.wav").frames == 0.3 * 16000  # decode wrote a.wav back
    assert cli.main(["roundtrip", str(tmp_path / "a.wav"), "--model", model_dir]) == 0
    assert (tmp_path / "a.roundtrip.wav").is_file()


CACHE_DRIVER = r"""
import json, sys
import jax
from jax import monitoring
counts = {"hit": 0, "miss": 0}
def listen(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        counts["hit"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        counts["miss"] += 1
monitoring.register_event_listener(listen)
from hificodec_jax import cli
cli.main(sys.argv[1:])
print("COUNTS " + json.dumps(counts))
"""


def test_a_second_cli_call_compiles_nothing(model_dir, tmp_path):
    sf.write(tmp_path / "a.wav", synthetic_speech(16000, 0.3), 16000)
    env = {k: v for k, v in os.environ.items() if k != "HIFICODEC_TEST_XLA_CACHE"}
    env["HIFICODEC_JAX_CACHE"] = str(tmp_path / "cache")

    def counts():
        argv = ["encode", str(tmp_path / "a.wav"), "--model", model_dir, "--overwrite"]
        proc = subprocess.run(
            [sys.executable, "-c", CACHE_DRIVER, *argv], env=env, capture_output=True,
            text=True, timeout=600, cwd=REPO,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("COUNTS "))
        return json.loads(line[7:])

    first, second = counts(), counts()
    assert first["miss"] > 0 and first["hit"] == 0, first
    assert second == {"hit": first["miss"], "miss": 0}, (first, second)
    assert (tmp_path / "cache").is_dir()


def test_decode_stream_writes_the_whole_decode_as_raw_pcm_to_stdout(model_dir, tmp_path):
    sf.write(tmp_path / "a.wav", synthetic_speech(16000, 0.5), 16000)
    hfc = tmp_path / "a.hfc"
    assert (
        cli.main(["encode", str(tmp_path / "a.wav"), "--model", model_dir, "--out", str(hfc)]) == 0
    )
    env = {k: v for k, v in os.environ.items() if k != "HIFICODEC_TEST_XLA_CACHE"}
    env["HIFICODEC_JAX_CACHE"] = "off"
    argv = ["decode", str(hfc), "--model", model_dir, "--stream", "-", "--chunk-frames", "3"]
    proc = subprocess.run(
        [sys.executable, "-m", "hificodec_jax.cli", *argv], env=env, capture_output=True,
        timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    pcm = np.frombuffer(proc.stdout, "<i2")
    codes, _ = read_hfc(hfc)
    codec, variables = loading.load(model_dir)
    whole = np.asarray(codec.apply(variables, codes[None], method="decode"))[0]
    assert pcm.shape == whole.shape == (codes.shape[0] * codec.hop,)
    assert np.max(np.abs(pcm.astype(int) - float_to_int16(whole).astype(int))) <= 1
    assert "--stream takes one .hfc file" in _fail(
        ["decode", str(tmp_path / "a.wav"), "--model", model_dir, "--stream", "-"]
    )


def test_a_clip_shorter_than_one_frame_is_refused_before_anything_compiles(model_dir, tmp_path):
    sf.write(tmp_path / "tick.wav", synthetic_speech(16000, 0.3)[:30], 16000)  # hop is 40
    message = _fail(["encode", str(tmp_path / "tick.wav"), "--model", model_dir])
    assert "tick.wav: shorter than one frame of this model (40 samples at 16000 Hz)" in message
    assert not (tmp_path / "tick.hfc").exists()
