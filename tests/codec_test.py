"""The Codec module on the tiny config: shapes, jit/vmap, lengths, lower bitrate, bad input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import config, fast_init, noise

import hificodec_jax
from hificodec_jax.models.layers import NORM_INPUTS, NORM_STATS, MaskedGroupNorm, group_moments


@functools.cache
def tiny(update: str = "ema"):
    cfg = config("tiny")
    cfg.model.quantizer.update = update
    codec = hificodec_jax.build_codec(cfg)
    return codec, fast_init(codec, 400)


def test_init_builds_every_variable():
    codec, variables = tiny()
    real = jax.jit(codec.init)(jax.random.key(0), jnp.zeros((1, 400)))
    assert jax.tree.map(np.shape, real) == jax.tree.map(np.shape, variables)
    v = real["params"]["decoder"]["conv_pre"]
    norm = np.sqrt((np.asarray(v["weight_v"]) ** 2).sum(axis=(0, 1), keepdims=True))
    np.testing.assert_allclose(v["weight_g"], norm, rtol=1e-6)  # g = ||v|| at init (torch)
    cb = np.asarray(real["vq"]["quantizer"]["codebooks"])
    assert np.abs(cb).max() <= 1 / 64 and not real["vq"]["quantizer"]["initialized"]


def test_shapes_and_output_length():
    codec, variables = tiny()
    assert codec.hop == 40 == hificodec_jax.hop_length(config("tiny"))
    wav = noise((2, 437))  # not a multiple of the hop: floor(437 / 40) = 10 frames
    out = jax.jit(codec.apply)(variables, wav)
    assert out.wav_hat.shape == (2, 400)
    assert out.codes.shape == (2, 10, 4) and out.codes.dtype == jnp.int32
    assert out.z.shape == out.z_q.shape == (2, 10, 32)
    assert out.stats.perplexity.shape == (4,) and out.stats.counts.shape == (4, 64)
    assert np.all(np.abs(out.wav_hat) < 1.0)  # tanh output
    codes = codec.apply(variables, wav, method="encode")
    np.testing.assert_array_equal(codes, out.codes)
    np.testing.assert_allclose(
        codec.apply(variables, codes, method="decode"), out.wav_hat, atol=1e-6
    )


def test_rank1_input_and_vmap():
    codec, variables = tiny()
    wav = noise((3, 200), seed=1)
    batched = codec.apply(variables, wav)
    single = codec.apply(variables, wav[1])
    assert single.wav_hat.shape == (200,) and single.codes.shape == (5, 4)
    mapped = jax.vmap(lambda w: codec.apply(variables, w).wav_hat)(wav)
    np.testing.assert_allclose(single.wav_hat, batched.wav_hat[1], atol=1e-6)
    np.testing.assert_allclose(mapped, batched.wav_hat, atol=1e-6)


def test_lengths_mask_padding_out():
    codec, variables = tiny()
    clip = noise((1, 600), seed=2)
    padded = np.concatenate([clip, noise((1, 400), seed=3)], axis=1)  # garbage after the clip
    batch = np.concatenate([padded, noise((1, 1000), seed=4)])
    out = codec.apply(variables, batch, lengths=np.array([600, 1000]))
    alone = codec.apply(variables, clip)
    assert out.frame_mask[0].sum() == 15 and out.frame_mask[1].all()
    # Masked convs and GroupNorm: a padded clip encodes and decodes exactly as it does alone.
    np.testing.assert_allclose(out.z[0, :15], alone.z[0], atol=2e-5)
    np.testing.assert_array_equal(out.codes[0, :15], alone.codes[0])
    np.testing.assert_allclose(out.wav_hat[0, :600], alone.wav_hat[0], atol=2e-5)
    assert np.all(out.wav_hat[0, 600:] == 0.0)
    # A length that is not a multiple of the hop keeps floor(length / hop) frames.
    odd = codec.apply(variables, batch, lengths=np.array([617, 1000]))
    np.testing.assert_allclose(
        odd.z[0, :15], codec.apply(variables, padded[:, :617]).z[0], atol=2e-5
    )
    # Stats only count valid frames.
    assert float(out.stats.counts.sum(-1)[0]) == 15 + 25
    # decode(frame_lengths): the padded batch's codes decode as the round trip did.
    decoded = codec.apply(variables, out.codes, np.array([15, 25]), method="decode")
    np.testing.assert_allclose(decoded, out.wav_hat, atol=1e-6)
    assert np.all(decoded[0, 600:] == 0.0)
    with pytest.raises(ValueError, match="frame_lengths"):
        codec.apply(variables, out.codes, np.array([0, 25]), method="decode")


def test_group_norm_whole_file_statistics_mode():
    """Sown inputs pooled with group_moments give the layer's own statistics; given
    statistics replace them only where ``use`` is true."""
    norm = MaskedGroupNorm(2)
    x = jnp.asarray(noise((1, 50, 8), seed=8)) + jnp.arange(8.0)
    params = norm.init(jax.random.key(0), x)
    own, sown = norm.apply(params, x, mutable=[NORM_INPUTS])
    ((xg, mask),) = traverse_util.flatten_dict(sown[NORM_INPUTS])[("x",)]
    n, mean, m2 = group_moments(xg, mask)
    xs = np.asarray(x).reshape(50, 2, 4)
    assert float(n) == 200
    np.testing.assert_allclose(mean, xs.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(m2 / n, xs.var(axis=(0, 2)), rtol=1e-4)
    given = {"mean": np.array([1.0, 5.0], np.float32), "var": np.array([4.0, 0.25], np.float32)}
    for use in (False, True):
        y = norm.apply({**params, NORM_STATS: {**given, "use": np.bool_(use)}}, x)
        mu, var = (given["mean"], given["var"]) if use else (mean, m2 / n)
        expected = (xs - np.asarray(mu)[:, None]) / np.sqrt(np.asarray(var)[:, None] + 1e-6)
        np.testing.assert_allclose(y, expected.reshape(1, 50, 8), atol=2e-4)
        if not use:
            np.testing.assert_array_equal(y, own)


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_lower_bitrate_decoding(update):
    codec, variables = tiny(update)
    wav = noise((1, 400), seed=5)
    codes = codec.apply(variables, wav, method="encode", num_levels=1)
    assert codes.shape == (1, 10, 2)
    y = codec.apply(variables, codes, method="decode")
    out = codec.apply(variables, wav, num_levels=1)
    np.testing.assert_allclose(y, out.wav_hat, atol=1e-6)


def test_train_mode_updates_ema_and_is_jittable():
    codec, variables = tiny()
    wav = noise((2, 400), seed=6)

    @jax.jit
    def step(variables, wav, key):
        out, upd = codec.apply(variables, wav, train=True, mutable=["vq"], rngs={"vq": key})
        return out.loss, upd["vq"]

    loss, vq = step(variables, wav, jax.random.key(1))
    assert np.isfinite(loss) and bool(vq["quantizer"]["initialized"])
    assert not np.allclose(vq["quantizer"]["codebooks"], variables["vq"]["quantizer"]["codebooks"])


def test_gradients_finite():
    codec, variables = tiny("loss")
    wav = noise((2, 400), seed=7)

    def loss(params):
        out = codec.apply({**variables, "params": params}, wav)
        return jnp.mean(jnp.abs(out.wav_hat - wav[:, :400])) + out.loss

    grads = jax.jit(jax.grad(loss))(variables["params"])
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


@pytest.mark.parametrize(
    "wav, match",
    [
        (np.zeros((1, 1, 400), np.float32), "wav must be"),
        (np.zeros((1, 400), np.int16), "float"),
        (np.full((1, 400), np.nan, np.float32), r"NaN or infinite samples \(400, .* \(0, 0\)\)"),
        (np.where(np.arange(400) == 7, np.inf, 0).astype(np.float32), r"\(1, .* index 7\)"),
        (np.zeros((1, 39), np.float32), "shorter than one hop"),
    ],
)
def test_bad_wav_is_refused(wav, match):
    codec, variables = tiny()
    with pytest.raises(ValueError, match=match):
        codec.apply(variables, wav)


def test_bad_codes_and_lengths_are_refused():
    codec, variables = tiny()
    good = np.zeros((1, 5, 4), np.int32)
    with pytest.raises(ValueError, match=r"in \[0, 64\)"):
        codec.apply(variables, good + 64, method="decode")
    with pytest.raises(ValueError, match=r"in \[0, 64\)"):
        codec.apply(variables, good - 1, method="decode")
    with pytest.raises(ValueError, match="streams"):
        codec.apply(variables, good[..., :3], method="decode")
    with pytest.raises(ValueError, match="integers"):
        codec.apply(variables, good.astype(np.float32), method="decode")
    with pytest.raises(ValueError, match="lengths"):
        codec.apply(variables, np.zeros((2, 400), np.float32), lengths=np.array([400, 500]))


def test_folded_weights_give_same_output():
    cfg = config("tiny")
    codec, variables = tiny()
    folded = hificodec_jax.build_codec(cfg, weight_norm=False)
    fvars = {**variables, "params": hificodec_jax.fold_weight_norm(variables["params"])}
    wav = noise((1, 400), seed=8)
    np.testing.assert_allclose(
        folded.apply(fvars, wav).wav_hat, codec.apply(variables, wav).wav_hat, atol=1e-6
    )
    assert "kernel" in fvars["params"]["decoder"]["ups_0"]


def test_bitrate_of_released_configs():
    assert hificodec_jax.bitrate(config("grvq4")) == 2000.0
    assert hificodec_jax.bitrate(config("grvq4_24k_320d")) == 3000.0
    assert hificodec_jax.bitrate(config("grvq4_24k_240d")) == 4000.0
    assert hificodec_jax.bitrate(config("grvq8_24k_240d")) == 8000.0
    assert hificodec_jax.bitrate(config("grvq4"), num_levels=1) == 1000.0


def test_a_codec_knows_its_rate_frames_and_bitrate():
    codec = hificodec_jax.build_codec(config("grvq4"))
    assert (codec.sample_rate, codec.hop, codec.frame_rate) == (16000, 320, 50.0)
    assert codec.bitrate() == 2000.0 and codec.bitrate(num_levels=1) == 1000.0
    assert codec.bitrate(24000) == 3000.0  # another rate, given explicitly
    bare = hificodec_jax.build_codec(config("grvq4").model)  # a model section: no rate
    with pytest.raises(ValueError, match="no sample_rate"):
        bare.bitrate()


def test_the_0_2_import_paths_still_work_with_a_deprecation_warning():
    import importlib
    import sys

    for old, name, new in (
        ("hificodec_jax.codec.batching", "encode_batch", "hificodec_jax.inference.batching"),
        ("hificodec_jax.codec.inference", "chunked_encode", "hificodec_jax.inference.long_files"),
        ("hificodec_jax.codec.convert", "torch_to_flax", "hificodec_jax.reference.convert"),
    ):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
            module = importlib.import_module(old)
        assert getattr(module, name) is getattr(importlib.import_module(new), name)
