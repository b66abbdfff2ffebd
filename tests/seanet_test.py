"""The ``"seanet"`` family (the HiFi-Codec paper's text architecture) and ``configs/grvq4_seanet.py``."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hificodec_jax
from hificodec_jax.models.seanet import SeanetDecoder, SeanetEncoder

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grvq4_seanet.py"
SMALL_HOP = 40


def _config(arg: str = ""):
    return hificodec_jax.load_config(f"{CONFIG}{arg}")


def _small_config():
    """The paper config shrunk for speed: 2 blocks (hop 40), 4 channels, 16-d latent, 32 codes.

    Strides 5 and 8 cover both an odd ``K - S`` (asymmetric padding) and an even one; a third
    block costs more test time, nearly all XLA:CPU compilation.
    """
    config = _config()
    model = config.model
    model.latent_dim = 16
    model.encoder.channels = model.decoder.channels = 4
    model.encoder.strides = (5, 8)
    model.decoder.strides = (8, 5)
    model.quantizer.codebook_size = 32
    model.quantizer.kmeans_iters = 2
    return config


def _noise(shape, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module")
def small():
    """The small codec and its variables.

    Initialised with an ``unsafe_rbg`` key: XLA:CPU compiles threefry's uniform draws very slowly
    (seconds per parameter shape), RngBitGenerator's in a fraction of that.
    """
    codec = hificodec_jax.build_codec(_small_config())
    key = jax.random.key(0, impl="unsafe_rbg")
    variables = jax.jit(codec.init)(key, jnp.zeros((1, 3 * SMALL_HOP)))
    return codec, variables


def test_config_settings():
    for arg, rate, hop, kbps in [
        ("", 16000, 320, 2),
        (":24k_240", 24000, 240, 4),
        (":hop32", 16000, 32, 20),
    ]:
        config = _config(arg)
        assert config.model.family == "seanet"
        assert config.audio.sample_rate == rate
        assert hificodec_jax.hop_length(config) == hop
        assert math.prod(config.model.decoder.strides) == hop
        assert hificodec_jax.bitrate(config) == kbps * 1000
    with pytest.raises(ValueError, match="unknown setting"):
        _config(":48k")


def _conv(k, c_in, c_out):  # weight-normed Conv1d: v [K, C_in, C_out] + g [C_out] + bias [C_out]
    return k * c_in * c_out + 2 * c_out


def _conv_t(k, c_in, c_out):  # weight-normed ConvTranspose1d: v + g [C_in] (torch dim 0) + bias
    return k * c_in * c_out + c_in + c_out


def _res(c, k=3):  # residual unit: two k-wide convs at width c
    return 2 * _conv(k, c, c)


def _lstm(c, layers=2):  # OptimizedLSTMCell per layer: 4 gates x (W_i [c, c] + W_h [c, c] + b [c])
    return layers * 4 * (c * c + c * c + c)


def test_full_config_parameter_counts():
    config = _config()
    codec = hificodec_jax.build_codec(config)
    variables = jax.eval_shape(codec.init, jax.random.key(0), jnp.zeros((1, 4 * 320)))
    c, d, strides = 32, 512, (2, 4, 5, 8)
    top = c * 2 ** len(strides)  # 512
    encoder = _conv(7, 1, c) + _lstm(top) + _conv(7, top, d)
    for i, s in enumerate(strides):
        ch = c * 2**i
        encoder += _res(ch) + _conv(2 * s, ch, 2 * ch)
    decoder = _conv(7, d, top) + _lstm(top) + _conv(7, c, 1)
    for i, s in enumerate(reversed(strides)):
        ch = top // 2 ** (i + 1)
        decoder += _conv_t(2 * s, 2 * ch, ch) + _res(ch)
    params = variables["params"]
    assert _count(params["encoder"]) == encoder == 9_059_360
    assert _count(params["decoder"]) == decoder == 9_058_818
    # Inference form: folding weight norm gives exactly the weight_norm=False module's tree.
    plain = hificodec_jax.build_codec(config, weight_norm=False)
    plain_vars = jax.eval_shape(plain.init, jax.random.key(0), jnp.zeros((1, 4 * 320)))
    folded = jax.eval_shape(hificodec_jax.fold_weight_norm, params)
    shapes = functools.partial(jax.tree_util.tree_map, lambda x: x.shape)
    assert shapes(folded) == shapes(plain_vars["params"])


def test_modules_directly():
    """Module-level API and shapes (abstract evaluation only: nothing is compiled)."""
    enc = SeanetEncoder(strides=(2, 3), channels=2, latent_dim=6, lstm_layers=1)
    z, _ = jax.eval_shape(enc.init_with_output, jax.random.key(0), jnp.zeros((1, 6 * 5 + 4, 1)))
    assert z.shape == (1, 5, 6)
    dec = SeanetDecoder(strides=(3, 2), channels=2, lstm_layers=1, tanh_output=False)
    y, _ = jax.eval_shape(dec.init_with_output, jax.random.key(1), z)
    assert y.shape == (1, 30)


def test_round_trip_padding_and_grad(small):
    """One jitted training-style step on a padded batch: shapes, exact padding, finite gradients.

    Rows: a clip of ``t`` samples zero-padded to ``t_pad`` (lengths ``t``) and noise of
    ``t_pad - hop`` samples padded likewise; neither length is a multiple of the hop. With
    lengths, activations past a clip's end are zeroed before every conv and the unidirectional
    LSTMs get ``seq_lengths``, so the padded clip's latent, codes and reconstruction must equal
    those of the clip run alone, on all of its ``t // hop`` frames.
    """
    codec, variables = small
    t, t_pad = 16 * SMALL_HOP + 13, 24 * SMALL_HOP + 7
    f, f_pad = t // SMALL_HOP, t_pad // SMALL_HOP
    clip = _noise((1, t), seed=1)
    wav = jnp.asarray(
        np.concatenate([np.pad(clip, ((0, 0), (0, t_pad - t))), _noise((1, t_pad), 2)])
    )
    lengths = jnp.asarray([t, t_pad - SMALL_HOP])

    @jax.jit
    def step(params, wav, lengths):
        def loss_fn(params):
            out = codec.apply({**variables, "params": params}, wav, lengths)
            target = wav[:, : out.wav_hat.shape[1]] * out.frame_mask.repeat(SMALL_HOP, axis=1)
            return jnp.mean(jnp.square(out.wav_hat - target)) + out.loss, out

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, out), grads = step(variables["params"], wav, lengths)
    assert out.z.shape == (2, f_pad, 16) and out.codes.shape == (2, f_pad, 4)
    assert out.wav_hat.shape == (2, f_pad * SMALL_HOP)
    assert bool(jnp.all(jnp.abs(out.wav_hat) < 1.0))  # tanh output
    np.testing.assert_array_equal(out.frame_mask[0], np.arange(f_pad) < f)
    np.testing.assert_array_equal(out.wav_hat[0, f * SMALL_HOP :], 0.0)

    alone = jax.jit(codec.apply)(variables, jnp.asarray(clip))
    assert alone.z.shape == (1, f, 16) and alone.wav_hat.shape == (1, f * SMALL_HOP)
    np.testing.assert_allclose(out.z[0, :f], alone.z[0], atol=1e-5)
    np.testing.assert_array_equal(out.codes[0, :f], alone.codes[0])
    np.testing.assert_allclose(out.wav_hat[0, : f * SMALL_HOP], alone.wav_hat[0], atol=1e-5)

    assert np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    # Gradient reaches the encoder's LSTM and first conv through the straight-through quantizer.
    enc = grads["encoder"]
    assert float(jnp.abs(enc["lstm"]["layer_0"]["ii"]["kernel"]).sum()) > 0
    assert float(jnp.abs(enc["conv_pre"]["weight_v"]).sum()) > 0
