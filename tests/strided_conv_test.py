"""``space_to_depth_conv`` (strided convs as stride-1 convs over a space-to-depth input) against
``lax.conv_general_dilated``: outputs and both gradients, 1-D and 2-D, grouped, over a grid of
kernel sizes, strides (also larger than the kernel), paddings and lengths."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hificodec_jax.models.strided_conv import space_to_depth_conv

HI = jax.lax.Precision.HIGHEST


def _reference(x, w, strides, padding, dilation, groups):
    dn = ("NWC", "WIO", "NWC") if x.ndim == 3 else ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=dn,
        feature_group_count=groups,
        precision=HI,
    )


def _ours(x, w, strides, padding, dilation, groups, split):
    with jax.default_matmul_precision("highest"):
        return space_to_depth_conv(x, w, strides, padding, dilation, groups, split)


CASES_1D = [
    # (length, kernel, stride, (pad_lo, pad_hi), groups)
    (40, 41, 2, (20, 20), 4),  # MSD's stride-2 layer shape (narrow)
    (37, 41, 4, (20, 20), 2),  # length not a multiple of the stride; output of 5
    (16, 4, 2, (1, 1), 1),  # encoder-like
    (23, 3, 5, (0, 2), 1),  # stride larger than the kernel
    (30, 8, 4, (2, 2), 1),
    (9, 9, 3, (0, 0), 3),  # exactly one output frame
    (50, 5, 3, (2, 2), 1),  # MPD-like
]


@pytest.mark.parametrize("length,kernel,stride,padding,groups", CASES_1D)
@pytest.mark.parametrize("split", [True, False])
def test_1d_outputs_and_gradients_equal_strided_conv(
    length, kernel, stride, padding, groups, split
):
    rng = np.random.default_rng(length * 7 + kernel)
    c_in, c_out = 2 * groups, 3 * groups
    x = jnp.asarray(rng.standard_normal((2, length, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, c_in // groups, c_out)), jnp.float32)
    args = ((stride,), (padding,), (1,), groups)
    ref = _reference(x, w, *args)
    out = _ours(x, w, *args, split)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    g_ref = jax.vjp(lambda a, b: _reference(a, b, *args), x, w)[1](cot)
    g_out = jax.vjp(lambda a, b: _ours(a, b, *args, split), x, w)[1](cot)
    for a, b in zip(g_out, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape,kernel,strides,dilation,padding",
    [
        ((7, 33), (3, 9), (1, 2), (1, 1), ((1, 1), (4, 4))),  # MS-STFT convs_1
        ((7, 17), (3, 9), (1, 2), (4, 1), ((4, 4), (4, 4))),  # time-dilated, odd freq length
        ((6, 20), (3, 9), (1, 2), (2, 1), ((2, 2), (4, 4))),  # even freq length
        ((9, 11), (4, 3), (3, 2), (1, 1), ((1, 2), (0, 1))),  # strided along both axes
        ((5, 8), (3, 3), (1, 1), (2, 1), ((2, 2), (1, 1))),  # no stride: plain conv
    ],
)
def test_2d_outputs_and_gradients_equal_strided_conv(shape, kernel, strides, dilation, padding):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal((2, *shape, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, 3, 4)), jnp.float32)
    args = (strides, padding, dilation, 1)
    ref = _reference(x, w, *args)
    out = _ours(x, w, *args, True)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    g_ref = jax.vjp(lambda a, b: _reference(a, b, *args), x, w)[1](cot)
    g_out = jax.vjp(lambda a, b: _ours(a, b, *args, True), x, w)[1](cot)
    for a, b in zip(g_out, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_random_grid_matches():
    """25 random 1-D/2-D configurations (seeded): every output equals the strided conv."""
    rng = np.random.default_rng(0)
    for _ in range(25):
        rank = int(rng.integers(1, 3))
        groups = int(rng.choice([1, 2]))
        kernel = [int(rng.integers(1, 8)) for _ in range(rank)]
        strides = [int(rng.integers(1, 5)) for _ in range(rank)]
        dilation = [1 if s > 1 else int(rng.integers(1, 3)) for s in strides]
        padding = [tuple(int(p) for p in rng.integers(0, 4, 2)) for _ in range(rank)]
        shape = [
            int(rng.integers(max(1, (k - 1) * d + 1 - sum(p)), 20))
            for k, d, p in zip(kernel, dilation, padding, strict=True)
        ]
        x = jnp.asarray(rng.standard_normal((1, *shape, 2 * groups)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((*kernel, 2, 3 * groups)), jnp.float32)
        args = (strides, padding, dilation, groups)
        np.testing.assert_allclose(
            _ours(x, w, *args, True), _reference(x, w, *args), rtol=1e-5, atol=1e-5
        )


def test_dilated_strided_axis_and_short_input_are_refused():
    x = jnp.zeros((1, 10, 2))
    w = jnp.zeros((3, 2, 2))
    with pytest.raises(ValueError, match="dilation 1"):
        space_to_depth_conv(x, w, (2,), ((1, 1),), (2,))
    with pytest.raises(ValueError, match="too short"):
        space_to_depth_conv(jnp.zeros((1, 2, 2)), jnp.zeros((5, 2, 2)), (2,), ((0, 0),))
    for bad in itertools.product([(1, 1)], [((1, 1),)]):  # wrong number of stride entries
        with pytest.raises(ValueError, match="entries"):
            space_to_depth_conv(x, w, *bad)


def test_one_program_for_every_platform_carries_each_platform_form():
    """Exported for CPU, CUDA and TPU at once, MSD's strided grouped conv (and its gradients)
    holds both forms: the looped dense convs for CPU, XLA's strided grouped conv for the
    others; run here (its CPU branch), it equals the strided conv."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 40, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((41, 2, 12)), jnp.float32)
    args = ((4,), ((20, 20),), (1,), 4)

    def value_and_grads(fn):
        return jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(jnp.sin(fn(a, b, *args))), (0, 1)))

    ours = value_and_grads(lambda a, b, *rest: _ours(a, b, *rest, True))
    exported = jax.export.export(ours, platforms=["cpu", "cuda", "tpu"])(x, w)
    text = exported.mlir_module()
    assert "stablehlo.while" in text  # the CPU form's group loops
    assert "feature_group_count = 4" in text  # the native form
    assert "stride = [4]" in text  # ... with its window stride
    (value, grads), (value_ref, grads_ref) = exported.call(x, w), value_and_grads(_reference)(x, w)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    for a, b in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
