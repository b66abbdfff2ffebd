"""Model directories (save / load / model_id) and .pth conversion, on the tiny config."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import config, fast_init, noise
from pth_writer import write_pth

import hificodec_jax
from hificodec_jax import hub, loading, model_dir, presets
from hificodec_jax.models.codec import MissingEncoderError
from hificodec_jax.reference import convert
from hificodec_jax.reference.convert import CheckpointMismatchError, flax_to_torch
from hificodec_jax.reference.pth import CheckpointFormatError

V1_MODEL = Path(__file__).resolve().parent / "data" / "model_v1_tiny"


@functools.cache
def source():
    """The tiny WN codec, float32 variables drawn with numpy, and a test signal."""
    codec = hificodec_jax.build_codec(config("tiny"))
    variables = fast_init(codec, 4000)
    variables = jax.tree.map(
        lambda x: np.asarray(x, jax.dtypes.canonicalize_dtype(x.dtype)), variables
    )
    return codec, variables, noise((4000,), seed=5)


@functools.cache
def jitted(codec, method: str | None = None):
    return jax.jit(functools.partial(codec.apply, method=method) if method else codec.apply)


@functools.cache
def reference_outputs():
    codec, variables, wav = source()
    out = jitted(codec)(variables, wav)
    return np.asarray(out.codes), np.asarray(out.wav_hat)


def assert_same_outputs(codec, variables):
    codes, wav_hat = reference_outputs()
    out = jitted(codec)(variables, source()[2])
    np.testing.assert_array_equal(np.asarray(out.codes), codes)
    np.testing.assert_allclose(np.asarray(out.wav_hat), wav_hat, atol=1e-5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    _, variables, _ = source()
    path = tmp_path_factory.mktemp("models") / "tiny"
    return model_dir.save_model(path, config("tiny"), variables, source="unit test")


# ---------------------------------------------------------------------------------------------
# save / load


def test_save_load_round_trip_is_bitwise(saved):
    _, variables, _ = source()
    codec, loaded = loading.load(saved, inference=False)
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
        a = np.asarray(a)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    assert codec == source()[0]
    meta = json.loads((Path(saved) / "model.json").read_text())
    assert meta["format_version"] == model_dir.FORMAT_VERSION
    assert meta["has_encoder"] is True and meta["source"] == "unit test"
    assert meta["hificodec_jax_version"] == hificodec_jax.__version__


def test_model_id_is_stable(saved, tmp_path):
    _, variables, _ = source()
    ident = model_dir.model_id(saved)
    assert isinstance(ident, bytes) and len(ident) == 16
    assert model_dir.model_id(variables) == ident
    assert model_dir.model_id(loading.load(saved, inference=False)[1]) == ident
    again = model_dir.save_model(tmp_path / "again", config("tiny"), variables)
    assert model_dir.model_id(again) == ident
    changed = jax.tree.map(lambda x: x, variables)
    changed["params"]["decoder"]["conv_post"]["bias"] = changed["params"]["decoder"]["conv_post"][
        "bias"
    ] + np.float32(1e-6)
    assert model_dir.model_id(changed) != ident


def test_config_round_trips(saved):
    cfg = hificodec_jax.load_config(saved)
    original = config("tiny")
    assert cfg.to_dict() == original.to_dict()
    assert isinstance(cfg.model.decoder.resblock_dilations[0], tuple)
    assert hificodec_jax.bitrate(cfg) == hificodec_jax.bitrate(original)


def test_folded_load_gives_the_same_outputs(saved):
    codec, variables = hificodec_jax.load(saved)  # inference=True
    assert codec.encoder.weight_norm is False and codec.decoder.weight_norm is False
    assert "weight_v" not in str(jax.tree_util.tree_structure(variables))
    assert_same_outputs(codec, variables)


def test_a_bf16_trained_model_loads_in_float32_unless_asked(tmp_path):
    _, variables, _ = source()
    cfg = config("tiny")
    cfg.precision = "bfloat16"
    path = model_dir.save_model(tmp_path / "bf16", cfg, variables, source="unit test")
    codec, variables = hificodec_jax.load(path)
    assert codec.dtype == jnp.float32
    assert_same_outputs(codec, variables)  # bit-equal codes to the float32 model
    codec16, _ = hificodec_jax.load(path, precision="bfloat16")
    assert codec16.dtype == jnp.bfloat16


def test_save_refuses_to_overwrite_and_cleans_up_after_a_crash(saved, tmp_path, monkeypatch):
    _, variables, _ = source()
    with pytest.raises(FileExistsError):
        model_dir.save_model(saved, config("tiny"), variables)
    import safetensors.numpy

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        model_dir.save_model(tmp_path / "m", config("tiny"), variables)
    assert os.listdir(tmp_path) == []  # neither the model nor a temp dir
    with pytest.raises(
        RuntimeError, match="disk full"
    ):  # the old model survives a failed overwrite
        model_dir.save_model(saved, config("tiny"), variables, overwrite=True)
    assert model_dir.model_id(saved) == model_dir.model_id(variables)


def test_save_checks_variables_against_the_config(tmp_path):
    _, variables, _ = source()
    bad = jax.tree.map(lambda x: x, variables)
    bad["params"]["decoder"]["conv_post"]["bias"] = np.full((1,), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        model_dir.save_model(tmp_path / "nan", config("tiny"), bad)
    other = config("tiny")
    other.model.latent_dim = 16
    with pytest.raises(ValueError, match="shape"):
        model_dir.save_model(tmp_path / "mismatch", other, variables)
    assert not (tmp_path / "nan").exists() and not (tmp_path / "mismatch").exists()


def _copy_model(saved, tmp_path, name: str = "copy") -> Path:
    import shutil

    copy = tmp_path / name
    shutil.copytree(saved, copy)
    return copy


def _largest_checkpoint_file(model: Path) -> Path:
    files = [p for p in model.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("version", [1, 2])
def test_truncated_checkpoint_raises_model_load_error(saved, tmp_path, version):
    copy = _copy_model(saved if version == 2 else V1_MODEL, tmp_path)
    largest = _largest_checkpoint_file(copy)
    assert largest.name == "model.safetensors" or version == 1
    data = largest.read_bytes()
    largest.write_bytes(data[: len(data) // 2])
    with pytest.raises(model_dir.ModelLoadError, match="truncated") as info:
        loading.load(copy)
    assert str(copy) in str(info.value) and largest.name in str(info.value)
    largest.unlink()
    with pytest.raises(model_dir.ModelLoadError, match="missing"):
        loading.load(copy)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("version", [1, 2])
def test_corrupt_checkpoint_raises_model_load_error(saved, tmp_path, version):
    """Same size, garbage content: the reader's own error is wrapped (or the id check fails)."""
    copy = _copy_model(saved if version == 2 else V1_MODEL, tmp_path)
    largest = _largest_checkpoint_file(copy)
    largest.write_bytes(b"\0" * largest.stat().st_size)
    with pytest.raises(model_dir.ModelLoadError, match="corrupt") as info:
        loading.load(copy)
    assert str(copy / ("model.safetensors" if version == 2 else "variables")) in str(info.value)
    time.sleep(0.5)  # orbax's failed reads finish on its threads: keep their noise in this test


def test_changed_weights_fail_the_id_check(saved, tmp_path):
    import safetensors
    import safetensors.numpy

    copy = _copy_model(saved, tmp_path)
    path = copy / "model.safetensors"
    weights = safetensors.numpy.load_file(path)
    with safetensors.safe_open(path, "np") as f:
        metadata = f.metadata()
    weights["params/decoder/conv_post/bias"] = weights["params/decoder/conv_post/bias"] + 1
    size = path.stat().st_size
    safetensors.numpy.save_file(weights, path, metadata=metadata)
    assert path.stat().st_size == size  # passes the size check, fails the id check
    with pytest.raises(model_dir.ModelLoadError, match="do not match the model id"):
        loading.load(copy)


def test_a_version_1_directory_still_loads():
    """``tests/data/model_v1_tiny``: written by hificodec_jax 0.1.0 (orbax checkpoint) from
    ``source()``'s variables."""
    _, variables, _ = source()
    assert json.loads((V1_MODEL / "model.json").read_text())["format_version"] == 1
    assert model_dir.model_id(V1_MODEL) == model_dir.model_id(variables)
    codec, loaded = loading.load(V1_MODEL, inference=False)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
        assert np.asarray(a).tobytes() == b.tobytes()
    assert_same_outputs(*hificodec_jax.load(V1_MODEL))


def test_safetensors_file_is_portable(saved):
    """Flat ``/``-joined keys, torch-free metadata: what other frameworks and the Hub read."""
    import safetensors
    import safetensors.numpy

    weights = safetensors.numpy.load_file(Path(saved) / "model.safetensors")
    _, variables, _ = source()
    assert weights["params/decoder/conv_pre/weight_v"].shape == (7, 32, 32)
    np.testing.assert_array_equal(
        weights["vq/quantizer/codebooks"], variables["vq"]["quantizer"]["codebooks"]
    )
    assert len(weights) == len(jax.tree.leaves(variables))
    with safetensors.safe_open(Path(saved) / "model.safetensors", "np") as f:
        assert f.metadata() == {"format": "flax", "model_id": model_dir.model_id(saved).hex()}
    assert sorted(os.listdir(saved)) == ["config.json", "model.json", "model.safetensors"]


def test_missing_and_foreign_directories(saved, tmp_path):
    with pytest.raises(model_dir.ModelNotFoundError, match="no model directory"):
        loading.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError (and a ValueError)
        hificodec_jax.load(tmp_path / "nowhere")
    copy = _copy_model(saved, tmp_path)
    meta = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(model_dir.ModelLoadError, match="unknown model format version 99"):
        loading.load(copy)
    (copy / "model.json").unlink()
    with pytest.raises(model_dir.ModelNotFoundError, match="model.json"):
        loading.load(copy)
    copy2 = _copy_model(saved, tmp_path, "copy2")
    (copy2 / "config.json").unlink()
    with pytest.raises(model_dir.ModelNotFoundError, match="config.json"):
        loading.load(copy2)


# ---------------------------------------------------------------------------------------------
# .pth conversion


@functools.cache
def reference_state():
    codec, variables, _ = source()
    return flax_to_torch(variables, codec)


@pytest.fixture(scope="module")
def pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pth") / "g_00001000.pth"
    write_pth(path, {**reference_state(), "steps": 1000})
    return path


def test_convert_checkpoint_round_trip(pth, tmp_path):
    out = convert.convert_checkpoint(pth, config("tiny"), tmp_path / "converted")
    meta = json.loads((Path(out) / "model.json").read_text())
    assert meta["has_encoder"] is True and meta["source"].startswith("g_00001000.pth sha256:")
    codec, variables = hificodec_jax.load(out)
    assert_same_outputs(codec, variables)
    _, wn = loading.load(out, inference=False)  # the weights themselves are exact
    for key in ("encoder", "decoder"):
        for a, b in zip(
            jax.tree.leaves(wn["params"][key]),
            jax.tree.leaves(source()[1]["params"][key]),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_decoder_only_checkpoint_decodes_but_cannot_encode(tmp_path):
    path = tmp_path / "decoder_only.pth"
    write_pth(path, {k: v for k, v in reference_state().items() if k != "encoder"})
    out = convert.convert_checkpoint(path, config("tiny"), tmp_path / "decoder_only")
    assert json.loads((Path(out) / "model.json").read_text())["has_encoder"] is False
    codec, variables = hificodec_jax.load(out)
    assert "encoder" not in variables["params"]
    codes, _ = reference_outputs()
    src_codec, src_variables, wav = source()
    expected = jitted(src_codec, "decode")(src_variables, codes)
    decoded = jitted(codec, "decode")(variables, codes)
    np.testing.assert_allclose(np.asarray(decoded), np.asarray(expected), atol=1e-5)
    for method in ("encode", "encode_latent", None):
        with pytest.raises(MissingEncoderError, match="has no encoder"):
            codec.apply(variables, wav, method=method)


def test_mismatching_config_names_key_and_shapes(pth, tmp_path):
    other = config("tiny")
    other.model.decoder.upsample_initial_channel = 48
    with pytest.raises(CheckpointMismatchError) as info:
        convert.convert_checkpoint(pth, other, tmp_path / "bad")
    message = str(info.value)
    # the first key in checkpoint order whose shape differs, with both shapes (torch layout)
    assert message.startswith("generator.conv_post.weight_v: ")
    assert "checkpoint shape (1, 4, 7) != model shape (1, 6, 7)" in message
    assert not (tmp_path / "bad").exists()


def test_truncated_pth_raises_a_clear_error(pth, tmp_path):
    data = pth.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointFormatError, match="cut.pth"):
        convert.convert_checkpoint(cut, config("tiny"), tmp_path / "cut")
    assert not (tmp_path / "cut").exists()
    with pytest.raises(FileNotFoundError):
        convert.convert_checkpoint(tmp_path / "none.pth", config("tiny"), tmp_path / "none")


def test_loading_reads_each_file_once_and_builds_the_codec_once(saved, monkeypatch):
    """By directory and by released name: model.json, config.json and the weights are each
    read once, and one codec is built."""
    import pathlib

    import safetensors.numpy

    from hificodec_jax import factory

    reads: list[str] = []
    real_read_text, real_load_file = pathlib.Path.read_text, safetensors.numpy.load_file
    real_build = factory.build_codec
    monkeypatch.setattr(
        pathlib.Path,
        "read_text",
        lambda self, *a, **k: reads.append(self.name) or real_read_text(self, *a, **k),
    )
    monkeypatch.setattr(
        safetensors.numpy,
        "load_file",
        lambda path, *a, **k: (
            reads.append(pathlib.Path(path).name) or real_load_file(path, *a, **k)
        ),
    )
    builds = []
    monkeypatch.setattr(
        loading, "build_codec", lambda *a, **k: builds.append(1) or real_build(*a, **k)
    )
    monkeypatch.setattr(hub, "download", lambda name, **k: str(saved))
    monkeypatch.setitem(
        presets.PRESETS,
        "test-name",
        presets.PRESETS["hificodec-16k-320d"],
    )
    for model in (str(saved), "test-name"):
        reads.clear()
        builds.clear()
        codec, variables = loading.load(model)
        assert sorted(reads) == ["config.json", "model.json", "model.safetensors"], model
        assert builds == [1], model


def test_saved_files_get_the_usual_permissions(saved):
    modes = {f.name: f.stat().st_mode & 0o777 for f in pathlib.Path(saved).iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes  # safetensors alone made 0600 files


def test_load_config_takes_a_model_directory_or_its_config_json(saved):
    expected = config("tiny").to_dict()
    for where in (saved, pathlib.Path(saved) / "config.json"):
        got = hificodec_jax.load_config(where).to_dict()
        assert got["model"] == expected["model"] and got["audio"] == expected["audio"], where
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hificodec_jax.load_config(pathlib.Path(saved).parent)
