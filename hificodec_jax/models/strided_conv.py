"""Strided convolutions computed as stride-1 convolutions over a space-to-depth input (exact).

Why: on XLA CPU the *input gradient* of a strided convolution is a convolution of the
zero-dilated output gradient (``lhs_dilation``), which runs much slower than the forward pass.
It dominates the backward passes of the discriminators (MSD's stride-2/4 grouped convs, the
MS-STFT's frequency-stride-2 convs). Folding each stride into channels turns the layer into a
stride-1 convolution, whose gradients are stride-1 convolutions too (figures in
docs/performance-notes.md).

The rewrite along one strided axis (stride ``s``, kernel ``K``, padding ``(lo, hi)``, input
length ``L``; output length ``L_out = (L + lo + hi - K) // s + 1``): with ``J = ceil(K / s)`` and
``xp`` = the input padded by ``lo`` on the left and cut or zero-extended to ``s * (L_out + J - 1)``
samples,

    y[t] = sum_k xp[s*t + k] @ w[k] = sum_j X[t + j] @ W[j],
    X[t] = concat_r xp[s*t + r],  W[j] = concat_r w[j*s + r]  (r < s; w zero beyond K),

a valid stride-1 convolution with ``J`` taps over ``s`` times the channels. Grouped convs keep
their group structure: the phases are placed inside each group's channel block.

These rewrites (and the looped grouped convs of :mod:`~hificodec_jax.models.grouped_conv`) are
for XLA CPU only: :func:`space_to_depth_conv` chooses the form inside the traced program
(``lax.platform_dependent``), so a program lowered for GPU or TPU, or exported for several
platforms at once, uses XLA's native strided and grouped convolutions (window strides,
``feature_group_count``) there, which those backends run well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hificodec_jax.models.grouped_conv import dense_conv, dimension_numbers, looped_grouped_conv

__all__ = ["conv_general", "native_conv", "space_to_depth_conv"]


def conv_general(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
    groups: int = 1,
    split_groups: bool = True,
) -> jax.Array:
    """Channels-last conv ``x [B, *S, C_in]``, ``kernel [*K, C_in/G, C_out]`` (no bias).

    Same function as ``lax.conv_general_dilated(..., feature_group_count=groups)``. With
    ``split_groups`` (and ``groups > 1``) it runs as one dense conv per group: XLA CPU's
    ``feature_group_count`` convolution is several times slower. Stride 1 without dilation (every
    grouped conv here, after space-to-depth) loops over the groups
    (:func:`~hificodec_jax.models.grouped_conv.looped_grouped_conv`); otherwise the groups
    are unrolled on channel slices and concatenated. A stride-1 dense conv is
    :func:`~hificodec_jax.models.grouped_conv.dense_conv`, whose gradients stay in the form
    XLA CPU runs as a library call.
    """
    dil = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * (x.ndim - 2)

    def conv(a, w, g):
        if g == 1 and all(s == 1 for s in strides):
            return dense_conv(a, w, padding, dil)
        return native_conv(a, w, strides, padding, dil, g)

    if groups == 1 or not split_groups:
        return conv(x, kernel, groups)
    if all(s == 1 for s in strides) and all(d == 1 for d in dil):
        return looped_grouped_conv(x, kernel, padding, groups)
    ci, co = x.shape[-1] // groups, kernel.shape[-1] // groups
    outs = [
        conv(x[..., g * ci : (g + 1) * ci], kernel[..., g * co : (g + 1) * co], 1)
        for g in range(groups)
    ]
    return jnp.concatenate(outs, axis=-1)


def native_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
    groups: int = 1,
) -> jax.Array:
    """XLA's own channels-last strided / grouped conv (the form used off CPU)."""
    rank = x.ndim - 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        tuple(strides),
        tuple(tuple(p) for p in padding),
        rhs_dilation=tuple(rhs_dilation) if rhs_dilation is not None else None,
        dimension_numbers=dimension_numbers(rank),
        feature_group_count=groups,
    )


def space_to_depth_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
    groups: int = 1,
    split_groups: bool = True,
) -> jax.Array:
    """Channels-last conv, in the form that runs best on the platform it is compiled for.

    Same function as ``lax.conv_general_dilated(..., feature_group_count=groups)`` (to float
    rounding). On CPU: :func:`conv_general` with every stride folded into channels (see the
    module docstring; a strided axis must have dilation 1, axes with stride 1 keep their
    padding and dilation), with ``split_groups`` the groups looped, and the stride-1 dense
    convs that leaves with canonical gradients. On every other platform: :func:`native_conv`.
    The choice is made per platform when the program is lowered (``lax.platform_dependent``);
    a grouped conv whose groups are not split is native everywhere.
    """
    rank = x.ndim - 2
    strides = tuple(strides)
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    dil = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * rank
    if len(strides) != rank or len(padding) != rank or len(dil) != rank:
        raise ValueError(f"strides/padding/dilation must have {rank} entries")
    strided = [a for a in range(rank) if strides[a] > 1]
    if any(dil[a] != 1 for a in strided):
        raise ValueError("a strided axis must have dilation 1")
    for a in strided:
        length, k, (lo, hi) = x.shape[1 + a], kernel.shape[a], padding[a]
        if length + lo + hi < k:
            raise ValueError(f"input too short along axis {a}: {length} < kernel {k}")
    if not strided and groups > 1 and not split_groups:
        return native_conv(x, kernel, strides, padding, dil, groups)
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=lambda x, k: _cpu_conv(x, k, strides, padding, dil, groups, split_groups),
        default=lambda x, k: native_conv(x, k, strides, padding, dil, groups),
    )


def _cpu_conv(x, kernel, strides, padding, dil, groups, split_groups) -> jax.Array:
    """The CPU form: space-to-depth along strided axes, then :func:`conv_general`."""
    rank = x.ndim - 2
    strided = [a for a in range(rank) if strides[a] > 1]
    if not strided:
        return conv_general(x, kernel, strides, padding, dil, groups, split_groups)
    c_in, g = x.shape[-1], groups
    ci = c_in // g
    new_padding = list(tuple(p) for p in padding)
    x_pad, k_pad = [(0, 0)] * x.ndim, [(0, 0)] * kernel.ndim
    x_len, taps = {}, {}
    for a in strided:
        s, k, (lo, hi) = strides[a], kernel.shape[a], padding[a]
        length = x.shape[1 + a]
        out_len = (length + lo + hi - k) // s + 1
        taps[a] = -(-k // s)
        x_len[a] = s * (out_len + taps[a] - 1)
        x_pad[1 + a] = (lo, max(x_len[a] - length - lo, 0))
        k_pad[a] = (0, taps[a] * s - k)
        new_padding[a] = (0, 0)
    x = jnp.pad(x, x_pad)
    x = x[(slice(None),) + tuple(slice(0, x_len.get(a)) for a in range(rank))]
    kernel = jnp.pad(kernel, k_pad)
    # x [B, ..., n_a * s_a, ..., G*ci] -> [B, ..., n_a, ..., G, s_a..., ci] -> channels merged.
    shape, phase_axes = [x.shape[0]], []
    for a in range(rank):
        if a in strided:
            shape += [x_len[a] // strides[a], strides[a]]
            phase_axes.append(len(shape) - 1)
        else:
            shape.append(x.shape[1 + a])
    x = x.reshape(*shape, g, ci)
    spatial = [i for i in range(1, len(shape)) if i not in phase_axes]
    group_axis = len(shape)
    x = x.transpose(0, *spatial, group_axis, *phase_axes, group_axis + 1)
    s_total = math.prod(strides[a] for a in strided)
    x = x.reshape(*x.shape[: 1 + rank], g * s_total * ci)
    # kernel [..., J_a * s_a, ..., ci, O] -> [..., J_a, ..., s_a..., ci, O] -> merged.
    kshape, kphase = [], []
    for a in range(rank):
        if a in strided:
            kshape += [taps[a], strides[a]]
            kphase.append(len(kshape) - 1)
        else:
            kshape.append(kernel.shape[a])
    kernel = kernel.reshape(*kshape, ci, kernel.shape[-1])
    kspatial = [i for i in range(len(kshape)) if i not in kphase]
    kernel = kernel.transpose(*kspatial, *kphase, len(kshape), len(kshape) + 1)
    kernel = kernel.reshape(*kernel.shape[:rank], s_total * ci, kernel.shape[-1])
    return conv_general(x, kernel, (1,) * rank, new_padding, dil, groups, split_groups)
