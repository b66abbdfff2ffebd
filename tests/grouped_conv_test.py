"""``looped_grouped_conv`` (groups in a loop, hand-written VJP) against XLA's grouped conv
(``feature_group_count``): outputs and both gradients, 1-D and 2-D, symmetric and asymmetric
padding; and the compiled gradient's structure the rewrite exists for (one convolution per
pass whatever the number of groups, all in the canonical form XLA CPU runs as a library call).
``dense_conv`` (one dense conv, the same VJP, with dilation) against ``lax``, and its gradient
convolutions canonical inside a ``shard_map``, where jax's own are not.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conv_forms

from hificodec_jax.models.grouped_conv import dense_conv, looped_grouped_conv

HI = jax.lax.Precision.HIGHEST


def _reference(x, w, padding, groups):
    dn = ("NWC", "WIO", "NWC") if x.ndim == 3 else ("NHWC", "HWIO", "NHWC")
    rank = x.ndim - 2
    return jax.lax.conv_general_dilated(
        x, w, (1,) * rank, padding, dimension_numbers=dn, feature_group_count=groups, precision=HI
    )


def _ours(x, w, padding, groups):
    with jax.default_matmul_precision("highest"):
        return looped_grouped_conv(x, w, padding, groups)


@pytest.mark.parametrize(
    "spatial,kernel,padding,groups",
    [
        ((40,), (41,), ((20, 20),), 4),  # MSD-like: kernel longer than the input
        ((33,), (11,), ((5, 5),), 16),  # MSD's 16 groups
        ((25,), (5,), ((0, 3),), 3),  # asymmetric padding
        ((19,), (4,), ((0, 0),), 2),  # valid conv (space-to-depth form)
        ((7, 12), (3, 5), ((1, 1), (2, 2)), 2),  # 2-D
        ((6, 9), (2, 3), ((0, 1), (2, 0)), 3),  # 2-D, asymmetric
    ],
)
def test_outputs_and_gradients_equal_feature_group_count(spatial, kernel, padding, groups):
    rng = np.random.default_rng(sum(spatial) + groups)
    x = jnp.asarray(rng.standard_normal((3, *spatial, 2 * groups)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, 2, 3 * groups)), jnp.float32)
    ref = _reference(x, w, padding, groups)
    out = jax.jit(_ours, static_argnums=(2, 3))(x, w, padding, groups)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    g_ref = jax.vjp(lambda a, b: _reference(a, b, padding, groups), x, w)[1](cot)
    g_out = jax.jit(jax.vjp(lambda a, b: _ours(a, b, padding, groups), x, w)[1])(cot)
    for a, b in zip(g_out, g_ref, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_second_call_with_other_padding_is_not_confused():
    """The custom VJP is built per padding (cached): two paddings in one program."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 20, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((5, 2, 4)), jnp.float32)

    def loss(fn, x, w):
        return jnp.sum(fn(x, w, ((2, 2),), 2) ** 2) + jnp.sum(fn(x, w, ((0, 4),), 2) ** 3)

    g_ref = jax.grad(lambda a, b: loss(_reference, a, b), (0, 1))(x, w)
    g_out = jax.grad(lambda a, b: loss(_ours, a, b), (0, 1))(x, w)
    for a, b in zip(g_out, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_wrong_padding_rank_is_refused():
    with pytest.raises(ValueError, match="padding must have 1 entries"):
        looped_grouped_conv(jnp.zeros((1, 8, 4)), jnp.zeros((3, 2, 4)), ((1, 1), (1, 1)), 2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU's convolution forms")
@pytest.mark.parametrize("groups", [4, 16])
def test_compiled_gradient_has_three_canonical_convolutions(groups):
    """Forward, input gradient and kernel gradient: one convolution each, in the canonical
    ``b0f_0io->b0f`` form (XLA CPU runs others inside a loop as naive loops, far slower)."""
    x = jnp.zeros((2, 64, 2 * groups), jnp.float32)
    w = jnp.zeros((9, 2, 4 * groups), jnp.float32)
    grad = jax.jit(
        jax.grad(lambda a, b: jnp.sum(looped_grouped_conv(a, b, ((4, 4),), groups) ** 2), (0, 1))
    )
    hlo = grad.lower(x, w).compile().as_text()
    labels = conv_forms(hlo)
    assert labels == ["b0f_0io->b0f"] * 3, labels


@pytest.mark.parametrize(
    "spatial,kernel,padding,dilation",
    [
        ((30,), (7,), ((3, 3),), (1,)),
        ((30,), (3,), ((2, 2),), (2,)),  # dilated, "same"
        ((25,), (5,), ((0, 3),), (1,)),  # asymmetric padding
        ((12, 17), (3, 5), ((1, 1), (2, 2)), (1, 1)),  # 2-D (the MS-STFT convs)
        ((12, 17), (3, 5), ((4, 4), (2, 2)), (4, 1)),  # 2-D, dilated in time
        ((9, 8), (2, 3), ((0, 1), (2, 0)), (1, 1)),  # 2-D, asymmetric
        ((10,), (3,), ((3, 0),), (1,)),  # padding past the kernel's reach: XLA's own VJP
    ],
)
def test_dense_conv_outputs_and_gradients_equal_lax(spatial, kernel, padding, dilation):
    rng = np.random.default_rng(sum(spatial) + sum(kernel))
    x = jnp.asarray(rng.standard_normal((3, *spatial, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, 4, 5)), jnp.float32)
    dn = ("NWC", "WIO", "NWC") if x.ndim == 3 else ("NHWC", "HWIO", "NHWC")

    def ref(a, b):
        return jax.lax.conv_general_dilated(
            a, b, (1,) * len(spatial), padding, rhs_dilation=dilation, dimension_numbers=dn,
            precision=HI,
        )  # fmt: skip

    def ours(a, b):
        with jax.default_matmul_precision("highest"):
            return dense_conv(a, b, padding, dilation)

    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y, vjp = jax.vjp(ours, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
    for a, b in zip(jax.jit(vjp)(cot), vjp_ref(cot), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_dense_conv_gradients_stay_canonical_inside_shard_map():
    """A platform choice inside a ``shard_map`` body is a conditional when XLA CPU makes the
    gradient convolutions canonical, so jax's own stay in their transposed forms there (naive
    loops); ``dense_conv``'s are the canonical library calls."""
    from hificodec_jax.training import sharding

    mesh = sharding.make_mesh()
    x = jnp.zeros((8, 20, 16, 4), jnp.float32)
    w = jnp.zeros((3, 5, 4, 8), jnp.float32)
    pad = ((2, 2), (2, 2))

    def labels(conv):
        def loss(a, b):
            y = sharding.on_own_rows(lambda b, a: conv(a, b), mesh, whole_args=1)(b, a)
            return jnp.sum(y**2)

        hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
        return sorted(set(conv_forms(hlo)))

    lax_conv = functools.partial(
        jax.lax.conv_general_dilated, window_strides=(1, 1), padding=pad,
        rhs_dilation=(2, 1), dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip

    def choose(conv):
        return lambda a, b: jax.lax.platform_dependent(a, b, cpu=conv, default=lax_conv)

    assert labels(lax_conv) == ["b01f_01io->b01f"]
    assert labels(choose(lax_conv)) != ["b01f_01io->b01f"]  # what dense_conv is for
    assert labels(choose(lambda a, b: dense_conv(a, b, pad, (2, 1)))) == ["b01f_01io->b01f"]
