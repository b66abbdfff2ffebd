"""Narrow convolutions in lane-dense forms, for TPUs (exact).

Why: a TPU keeps the channel (minor) dimension in 128-wide lanes, so a conv with 32 channels
fills a quarter of the vector registers and of the matrix unit's width; the TPU compiler's cycle
model charges a 32-channel conv about 12x the time per FLOP of a 128-channel one (figures in
docs/performance-notes.md). Used, on TPU only, by the MS-STFT discriminator (32 filters; folded
along frequency), the decoder's 64- and 32-channel ResBlock stages (folded along time) and MSD's
grouped convs whose input fits one lane row (dense, :func:`block_diagonal_kernel`).

Folding: ``f`` neighbours along one spatial axis become one position with ``f`` times the
channels, ``X[v][(a, i)] = x[f*v + a][i]`` (``a < f``; positions past the true length are zero).
A conv along that axis (stride ``s``, kernel ``K``, dilation ``d``, left padding ``lo``) between
inputs folded by ``f_in`` and outputs folded by ``f_out`` (``s * f_out`` a multiple of ``f_in``,
``r = s * f_out / f_in``) is again a conv, with stride ``r``:

    y[o] = sum_k x[s*o + k*d - lo] @ w[k]   =>   Y[u] = sum_m X[r*u + m] @ W[m],
    W[m][(a, i), (b, o)] = w[k][i, o]  where  s*b + k*d - lo = m*f_in + a  (else 0).

The other spatial axes keep their stride, padding and dilation. ``W`` does a few times the
FLOPs of ``w`` (1.3-1.8x for the MS-STFT's layers) at several times the compiler's estimated
speed. Each entry of ``W`` is one entry of ``w`` or zero (a gather, no arithmetic), so the
result is the direct conv's to float rounding (tested on CPU against ``lax.conv``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LANES",
    "block_diagonal_kernel",
    "dense_is_cheaper",
    "fold",
    "fold_factor",
    "folded_conv",
    "folded_layer",
    "unfold",
    "zero_past",
]

LANES = 128  # a TPU vector register's minor dimension


def fold_factor(channels: int) -> int:
    """Neighbours to fold so that ``channels`` fill the lanes (1 when already that wide)."""
    return max(1, LANES // channels)


def fold(x: jax.Array, axis: int, f: int) -> jax.Array:
    """``x [..., L, ..., C]`` -> ``[..., ceil(L / f), ..., f * C]`` (zero-padded to whole
    blocks); ``axis`` is a spatial axis (not the last)."""
    length = x.shape[axis]
    blocks = -(-length // f)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, blocks * f - length)
    x = jnp.pad(x, pad)
    x = x.reshape(*x.shape[:axis], blocks, f, *x.shape[axis + 1 :])
    x = jnp.moveaxis(x, axis + 1, -2)
    return x.reshape(*x.shape[:-2], f * x.shape[-1])


def unfold(x: jax.Array, axis: int, f: int, length: int) -> jax.Array:
    """Inverse of :func:`fold`: ``[..., blocks, ..., f * C]`` -> ``[..., length, ..., C]``."""
    c = x.shape[-1] // f
    x = x.reshape(*x.shape[:-1], f, c)
    x = jnp.moveaxis(x, -2, axis + 1)
    x = x.reshape(*x.shape[:axis], x.shape[axis] * f, *x.shape[axis + 2 :])
    return jax.lax.slice_in_dim(x, 0, length, axis=axis)


@functools.cache
def _taps(k: int, stride: int, dilation: int, lo: int, f_in: int, f_out: int):
    """``(m_min, index [M, f_in, f_out], valid)``: kernel tap ``index[m - m_min, a, b]`` of
    folded tap ``m`` from input phase ``a`` to output phase ``b``."""
    offsets = {(b, kk): stride * b + kk * dilation - lo for b in range(f_out) for kk in range(k)}
    m_min = min(q // f_in for q in offsets.values())
    m_max = max(q // f_in for q in offsets.values())
    index = np.zeros((m_max - m_min + 1, f_in, f_out), np.int32)
    valid = np.zeros(index.shape, bool)
    for (b, kk), q in offsets.items():
        m, a = divmod(q, f_in)
        index[m - m_min, a, b], valid[m - m_min, a, b] = kk, True
    return m_min, index, valid


def folded_conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    axis: int,
    length: int,
    f_in: int,
    f_out: int,
    strides,
    padding,
    dilation,
) -> tuple[jax.Array, int]:
    """A channels-last conv of ``x`` folded by ``f_in`` along spatial ``axis`` (true length
    ``length``) -> ``(y folded by f_out, y's true length along axis)``; positions past it are
    zero. ``kernel [*K, C_in, C_out]``, ``strides``/``padding``/``dilation`` as the direct
    conv's (``lax.conv_general_dilated``, no groups)."""
    rank = x.ndim - 2
    a = axis - 1  # axis among the spatial ones
    k, s, d = kernel.shape[a], strides[a], dilation[a]
    lo, hi = padding[a]
    if (s * f_out) % f_in:
        raise ValueError(f"stride {s} x f_out {f_out} must be a multiple of f_in {f_in}")
    r = s * f_out // f_in
    out_len = (length + lo + hi - (k - 1) * d - 1) // s + 1
    m_min, index, valid = _taps(k, s, d, lo, f_in, f_out)
    taps = index.shape[0]
    u_out = -(-out_len // f_out)
    need = r * (u_out - 1) + taps  # folded input positions the valid conv reads
    left = -m_min
    if left < 0:  # the first tap starts past position 0
        x = jax.lax.slice_in_dim(x, -left, x.shape[axis], axis=axis)
        left = 0
    avail = x.shape[axis] + left
    pad = [(0, 0)] * x.ndim
    pad[axis] = (left, max(0, need - avail))
    x = jax.lax.slice_in_dim(jnp.pad(x, pad), 0, need, axis=axis)
    # W[..., m, ..., (a, i), (b, o)] = kernel[..., index[m, a, b], ..., i, o] where valid.
    c_in, c_out = kernel.shape[-2:]
    w = jnp.take(kernel, jnp.asarray(index), axis=a)  # [..., M, f_in, f_out, ..., C_in, C_out]
    w = jnp.moveaxis(w, (a + 1, a + 2), (-4, -2))  # [..., M, ..., f_in, C_in, f_out, C_out]
    mask = valid.reshape(*(1,) * a, taps, *(1,) * (rank - a - 1), f_in, 1, f_out, 1)
    w = jnp.where(mask, w, jnp.zeros((), w.dtype))
    w = w.reshape(*w.shape[:rank], f_in * c_in, f_out * c_out)
    new_strides = list(strides)
    new_padding = [tuple(p) for p in padding]
    new_dilation = list(dilation)
    new_strides[a], new_padding[a], new_dilation[a] = r, (0, 0), 1
    spec = "".join("HWD"[i] for i in range(rank))
    y = jax.lax.conv_general_dilated(
        x,
        w,
        tuple(new_strides),
        tuple(new_padding),
        rhs_dilation=tuple(new_dilation),
        dimension_numbers=(f"N{spec}C", f"{spec}IO", f"N{spec}C"),
    )
    return y, out_len


def zero_past(y: jax.Array, axis: int, f: int, length: int) -> jax.Array:
    """Zero the positions of folded ``y`` past ``length`` along ``axis`` (the padding the next
    layer must read as zeros)."""
    blocks, channels = y.shape[axis], y.shape[-1]
    if blocks * f == length:
        return y
    keep = np.repeat(np.arange(blocks * f) < length, channels // f)  # folded order (a, c)
    shape = [1] * y.ndim
    shape[axis], shape[-1] = blocks, channels
    return y * jnp.asarray(keep.reshape(shape), y.dtype)


def folded_layer(
    x, kernel, bias, *, axis: int, length: int, f: int, strides, padding, dilation
) -> tuple[jax.Array, int]:
    """A conv layer with bias on ``x`` folded by ``f`` along ``axis`` (true length ``length``):
    the output folded the same way, zero past its true length (as the next layer's padding
    must read), and that length."""
    y, out_len = folded_conv(
        x,
        kernel.astype(x.dtype),
        axis=axis,
        length=length,
        f_in=f,
        f_out=f,
        strides=strides,
        padding=padding,
        dilation=dilation,
    )
    y = y + jnp.tile(bias.astype(x.dtype), f)
    return zero_past(y, axis, f, out_len), out_len


def block_diagonal_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """A grouped conv's ``kernel [*K, C_in/G, C_out]`` as the dense kernel
    ``[*K, C_in, C_out]`` that is zero between groups (exact: entries copied, not computed)."""
    *ks, ci, c_out = kernel.shape
    g, co = groups, c_out // groups
    w = kernel.reshape(*ks, 1, ci, g, co)
    same = np.eye(g, dtype=bool).reshape(*(1,) * len(ks), g, 1, g, 1)
    w = jnp.where(same, w, jnp.zeros((), w.dtype))
    return w.reshape(*ks, g * ci, c_out)


def dense_is_cheaper(c_in: int, groups: int) -> bool:
    """Whether a grouped conv runs faster on TPU as the dense conv of its block-diagonal kernel:
    when the whole input is at most one lane row wide, the dense conv's ``groups`` times the
    FLOPs at full width beat the narrow groups (compiler's estimates for MSD's convs: 128
    channels in 4 or 16 groups yes, 256+ channels in 16 groups no)."""
    return groups > 1 and c_in <= LANES
