"""Programs for other platforms and serving: the train step and the codec lowered for TPU and
GPU use XLA's native grouped / strided convolutions (the CPU rewrites stay on CPU), and a
model exported with ``hificodec_jax.inference.export`` round-trips through its serialized
StableHLO. Lowering only: nothing here compiles for another platform."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import config, fast_init, noise

import hificodec_jax
from hificodec_jax import cli, model_dir
from hificodec_jax.inference import export
from hificodec_jax.models.lane_dense import dense_is_cheaper
from hificodec_jax.training import sharding
from hificodec_jax.training.compilation import batch_spec, build

GPU_TPU = (["tpu"], ["cuda"])


def _group_counts(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"feature_group_count = (\d+)", text)}


def _window_strides(text: str) -> set[tuple[int, ...]]:
    found = re.findall(r"window = \{stride = \[([\d, ]+)\]", text)
    return {tuple(int(v) for v in s.split(",")) for s in found}


@pytest.fixture(scope="module")
def tiny_step():
    """The tiny config's train step with all three discriminator families, on one device."""
    cfg = config("tiny")
    assert set(cfg.disc.families) == {"mpd", "msd", "stft"}
    mesh = sharding.make_mesh(jax.devices()[:1])
    _, _, abstract, step = build(cfg, mesh)
    args = (abstract, batch_spec(cfg, mesh))

    def lowered(platforms):
        return jax.export.export(step, platforms=platforms)(*args).mlir_module()

    return cfg, lowered


def test_cpu_train_step_keeps_the_cpu_rewrites(tiny_step):
    cfg, lowered = tiny_step
    text = lowered(["cpu"])
    assert "looped_grouped_conv" in text  # MSD's groups looped (the loops' scope name)
    assert _group_counts(text) == {1}  # no XLA grouped conv
    assert (1, 2) not in _window_strides(text)  # MS-STFT's frequency stride folded


@pytest.mark.parametrize("platforms", GPU_TPU, ids=lambda p: p[0])
def test_train_step_lowers_to_native_convs(tiny_step, platforms):
    cfg, lowered = tiny_step
    text = lowered(platforms)
    layers = cfg.disc.msd_layers
    c_ins = [1] + [c_out for c_out, _, _, _ in layers[:-1]]
    msd_groups = {g for (_, _, _, g) in layers if g > 1}
    assert msd_groups
    if platforms == ["tpu"]:  # groups within one lane row run dense there (lane_dense.py)
        dense = {g for (_, _, _, g), c in zip(layers, c_ins, strict=True) if dense_is_cheaper(c, g)}
        assert dense == msd_groups  # the tiny MSD's grouped convs have 8-16 channels
        assert _group_counts(text) == {1}
    else:
        assert msd_groups <= _group_counts(text)  # XLA's grouped convs
    assert "looped_grouped_conv" not in text  # no group loop
    assert (1, 2) in _window_strides(text)  # MS-STFT's strided convs as strided convs
    # The only loops left are the quantizer's k-means initialisations (one per residual level,
    # vmapped over the groups).
    assert text.count("stablehlo.while") == cfg.model.quantizer.num_levels
    # Compiler options are not part of an exported program: the CPU ones cannot travel along.
    assert "xla_cpu" not in text and "ynn" not in text.lower()


def _convolution_types(text: str) -> set[tuple[str, ...]]:
    """Element types ``(lhs, rhs, out)`` of the program's convolutions."""
    sig = r"stablehlo\.convolution.*: \(tensor<\S+x(\w+)>, tensor<\S+x(\w+)>\) -> tensor<\S+x(\w+)>"
    return set(re.findall(sig, text))


def test_bf16_train_step_for_tpu_convolves_in_bf16():
    cfg = config("tiny")
    cfg.precision = "bfloat16"
    mesh = sharding.make_mesh(jax.devices()[:1])
    _, _, abstract, step = build(cfg, mesh)
    text = jax.export.export(step, platforms=["tpu"])(abstract, batch_spec(cfg, mesh))
    text = text.mlir_module()
    assert _convolution_types(text) == {("bf16", "bf16", "bf16")}  # generator and all three Ds
    assert text.count("stablehlo.convolution") > 100
    assert "stablehlo.fft" in text and "complex<f32>" in text  # STFT and mel in float32


@pytest.fixture(scope="module")
def grvq4():
    codec = hificodec_jax.build_codec(config("grvq4"), weight_norm=False)
    variables = jax.eval_shape(
        codec.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4 * codec.hop), jnp.float32)
    )
    return codec, variables


@pytest.mark.parametrize("platforms", GPU_TPU, ids=lambda p: p[0])
def test_grvq4_encode_decode_lower(grvq4, platforms):
    codec, variables = grvq4
    b, t = export.symbolic_wav_shape(codec, variables)
    enc = jax.export.export(
        jax.jit(lambda v, w: codec.apply(v, w, method="encode")), platforms=platforms
    )(variables, jax.ShapeDtypeStruct((b, t), jnp.float32))
    (codes,) = enc.out_avals
    assert codes.dtype == jnp.int32 and str(codes.shape[1]) == f"floordiv(t, {codec.hop})"
    dec = jax.export.export(
        jax.jit(lambda v, c: codec.apply(v, c, method="decode")), platforms=platforms
    )(variables, jax.ShapeDtypeStruct((*jax.export.symbolic_shape("b, f"), 4), jnp.int32))
    (wav,) = dec.out_avals
    assert wav.dtype == jnp.float32 and str(wav.shape[1]) == f"{codec.hop}*f"
    for program in (enc, dec):
        text = program.mlir_module()
        assert "stablehlo.while" not in text and "looped_grouped_conv" not in text
        assert program.platforms == tuple(platforms)
    assert {(2,), (4,), (5,), (8,)} <= _window_strides(enc.mlir_module())  # strided encoder


# ---------------------------------------------------------------------------------------------
# Export for serving


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    variables = fast_init(hificodec_jax.build_codec(config("tiny")), 4000)
    path = tmp_path_factory.mktemp("models") / "tiny"
    return model_dir.save_model(path, config("tiny"), variables, source="unit test")


def test_exported_cpu_program_matches_the_python_model(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["export", str(tiny_model), "--out", str(out), "--platforms", "cpu,tpu"]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert (meta["sample_rate"], meta["hop"], meta["platforms"]) == (16000, 40, ["cpu", "tpu"])
    assert meta["encode"]["output"] == {
        "name": "codes",
        "shape": ["B", "T // hop", 4],
        "dtype": "int32",
    }
    with pytest.raises(cli.CliError, match="--overwrite"):
        cli.main(["export", str(tiny_model), "--out", str(out)])
    meta, enc, dec = export.load_exported(out)
    assert enc.platforms == dec.platforms == ("cpu", "tpu")  # one file for both
    codec, variables = hificodec_jax.load(tiny_model)
    encode = jax.jit(lambda w: codec.apply(variables, w, method="encode"))
    decode = jax.jit(lambda c: codec.apply(variables, c, method="decode"))
    # Lengths not multiples of the hop, batch sizes other than the symbolic default.
    for shape in ((2, 1234), (3, 2003)):
        wav = noise(shape, seed=shape[1])
        codes = np.asarray(enc.call(wav))
        assert codes.shape == (shape[0], shape[1] // 40, 4) and codes.dtype == np.int32
        np.testing.assert_array_equal(codes, np.asarray(encode(wav)))
        out = np.asarray(dec.call(codes))
        assert out.shape == (shape[0], shape[1] // 40 * 40) and out.dtype == np.float32
        np.testing.assert_allclose(out, np.asarray(decode(codes)), atol=1e-6)
    with pytest.raises(
        ValueError,
        match=r"wav must have shape \[B, T\] \(float32\), got .* \(1234,\): add a batch axis",
    ):
        enc.call(noise((1234,), seed=0))
    with pytest.raises(ValueError, match="codes must be int32, got float32"):
        dec.call(np.zeros((1, 3, 4), np.float32))


def test_export_errors(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="platforms must be"):
        export.export_model(tiny_model, tmp_path / "a", ["cpu", "gpu"])
    with pytest.raises(FileNotFoundError, match="export.json"):
        export.load_exported(tmp_path)
