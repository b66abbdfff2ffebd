"""The TPU forms with a spatial axis folded into channels (``models/lane_dense.py``) equal the
direct convs, on CPU where both run: every MS-STFT layer's geometry, and a whole MS-STFT
sub-discriminator (logits, feature maps and both gradients) in its folded layout."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hificodec_jax.models import lane_dense
from hificodec_jax.models.stft_discriminator import STFTDiscriminator


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize(
    "c_in, c_out, width, kernel, strides, padding, dilation, f_out",
    [
        (2, 32, 513, (3, 9), (1, 1), ((1, 1), (4, 4)), (1, 1), 4),  # convs_0
        (32, 32, 513, (3, 9), (1, 2), ((1, 1), (4, 4)), (1, 1), 4),  # convs_1
        (32, 32, 257, (3, 9), (1, 2), ((2, 2), (4, 4)), (2, 1), 4),  # convs_2
        (32, 32, 129, (3, 9), (1, 2), ((4, 4), (4, 4)), (4, 1), 4),  # convs_3
        (32, 32, 65, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 4),  # convs_4
        (32, 1, 65, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 4),  # conv_post
        (32, 16, 40, (3, 5), (1, 2), ((1, 1), (2, 2)), (1, 1), 2),  # f_out != f_in
    ],
)
def test_folded_conv_is_the_direct_conv(
    c_in, c_out, width, kernel, strides, padding, dilation, f_out
):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, width, c_in)).astype(np.float32)
    w = rng.standard_normal((*kernel, c_in, c_out)).astype(np.float32)
    want = jax.lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y, length = lane_dense.folded_conv(
        lane_dense.fold(x, 2, 4),
        w,
        axis=2,
        length=width,
        f_in=4,
        f_out=f_out,
        strides=strides,
        padding=padding,
        dilation=dilation,
    )
    assert length == want.shape[2]
    got = lane_dense.unfold(y, 2, f_out, length)
    assert got.shape == want.shape
    assert _rel(got, want) < 2e-6
    # Past the true length the folded output is zeroed for the next layer.
    tail = lane_dense.zero_past(y + 1.0, 2, f_out, length)
    tail = np.asarray(tail).reshape(*y.shape[:3], f_out, c_out).reshape(2, y.shape[1], -1, c_out)
    assert np.all(tail[:, :, length:] == 0) and np.all(tail[:, :, :length] != 0)


def test_folded_stft_discriminator_is_the_direct_one():
    """The same sub-discriminator, forced into each layout: logits, all five feature maps,
    and the gradients the D and G phases take (parameters, input)."""
    wav = jnp.asarray(np.random.default_rng(1).standard_normal((2, 2400)), jnp.float32) * 0.3
    direct = STFTDiscriminator(n_fft=256, hop_length=64, layout="direct")
    folded = STFTDiscriminator(n_fft=256, hop_length=64, layout="folded")
    params = direct.init(jax.random.key(0), wav)
    assert jax.tree.structure(params) == jax.tree.structure(folded.init(jax.random.key(0), wav))

    def loss(module, params, wav):
        logits, fmaps = module.apply(params, wav)
        return jnp.sum(jnp.square(logits)) + sum(jnp.sum(jnp.abs(f)) for f in fmaps)

    (logits_d, fmaps_d) = direct.apply(params, wav)
    (logits_f, fmaps_f) = folded.apply(params, wav)
    assert logits_f.shape == logits_d.shape == (2, 34, 17, 1)  # 129 frequencies, halved three times
    assert _rel(logits_f, logits_d) < 2e-6
    assert len(fmaps_f) == len(fmaps_d) == 5
    for a, b in zip(fmaps_f, fmaps_d, strict=True):
        assert a.shape == b.shape
        assert _rel(a, b) < 2e-6
    grads = [
        jax.grad(functools.partial(loss, m), argnums=(0, 1))(params, wav) for m in (direct, folded)
    ]
    for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0]), strict=True):
        assert _rel(a, b) < 1e-5


def test_folded_stft_features_are_the_folded_features():
    from hificodec_jax.models.stft_discriminator import stft_features

    wav = jnp.asarray(np.random.default_rng(2).standard_normal((2, 1000)), jnp.float32)
    direct = stft_features(wav, 128, 32)  # 65 frequencies: the last block has one
    folded = stft_features(wav, 128, 32, fold=4)
    assert folded.shape == (2, 28, 17, 8)
    np.testing.assert_array_equal(folded, lane_dense.fold(direct, 2, 4))


def test_folded_decoder_stages_are_the_direct_ones():
    """A decoder whose last two stages (32 and 16 channels) fold 4 and 8 time steps into the
    lanes: output and every gradient equal the direct form's, also with padded clips."""
    from hificodec_jax.models.hifigan import HifiDecoder

    common = dict(
        upsample_rates=(2, 2),
        upsample_kernel_sizes=(4, 4),
        upsample_initial_channel=64,
        resblock_kernel_sizes=(3, 7),
        resblock_dilations=((1, 3), (1, 3)),
    )
    direct, folded = (HifiDecoder(**common, layout=lay) for lay in ("direct", "folded"))
    z = jnp.asarray(np.random.default_rng(3).standard_normal((2, 10, 64)), jnp.float32)
    frames = jnp.asarray([10, 7])
    params = direct.init(jax.random.key(0), z, frames)

    def out(module, params, z):
        return module.apply(params, z, frames)

    want, got = out(direct, params, z), out(folded, params, z)
    assert got.shape == want.shape == (2, 40)
    assert _rel(got, want) < 2e-6
    grads = [
        jax.grad(lambda p, z, m=m: jnp.sum(jnp.square(out(m, p, z))), argnums=(0, 1))(params, z)
        for m in (direct, folded)
    ]
    for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0]), strict=True):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("c_in, c_out, stride, groups", [(128, 128, 2, 4), (128, 256, 2, 16)])
def test_block_diagonal_kernel_is_the_grouped_conv(c_in, c_out, stride, groups):
    """MSD's first grouped convs (kernel 41, padding 20) as dense convs, TPU's form for them."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 301, c_in)).astype(np.float32)
    w = rng.standard_normal((41, c_in // groups, c_out)).astype(np.float32)
    dn = ("NWC", "WIO", "NWC")
    want = jax.lax.conv_general_dilated(
        x, w, (stride,), ((20, 20),), dimension_numbers=dn, feature_group_count=groups
    )
    dense = lane_dense.block_diagonal_kernel(w, groups)
    assert dense.shape == (41, c_in, c_out)
    assert np.count_nonzero(dense) == w.size  # the groups' weights, zero between them
    got = jax.lax.conv_general_dilated(x, dense, (stride,), ((20, 20),), dimension_numbers=dn)
    assert _rel(got, want) < 2e-6
    assert lane_dense.dense_is_cheaper(c_in, groups)
    assert not lane_dense.dense_is_cheaper(256, 16)  # MSD's later grouped convs stay grouped
