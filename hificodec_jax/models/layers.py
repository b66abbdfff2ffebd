"""Building blocks shared by the codec models: weight-normed 1-D convs, transposed convs in
polyphase form, HiFi-GAN ResBlocks and a length-aware GroupNorm.

Everything is channels-last: activations are ``[B, T, C]``; kernels are stored as ``[K, C_in,
C_out]`` (flax's ``WIO``). Weight norm is a ``(weight_g, weight_v)`` parametrisation like
``torch.nn.utils.weight_norm`` (dim 0 of the torch weight); with ``weight_norm=False`` the same
module holds a plain ``kernel`` instead, which is what :func:`fold_weight_norm` produces for
inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hificodec_jax.models import lane_dense

LRELU_SLOPE = 0.1  # HiFi-GAN's leaky-ReLU slope, used everywhere except the encoder's last one.

_DN = ("NWC", "WIO", "NWC")


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric 'same' padding of a stride-1 conv (reference ``utils.get_padding``)."""
    return (kernel_size * dilation - dilation) // 2


def param_init_key(key: jax.Array) -> jax.Array:
    """An ``unsafe_rbg`` key drawn from ``key`` (any implementation), for ``Module.init``.

    Deviation from threefry, jax's default: XLA compiles every threefry draw into its own
    unrolled hash (flax folds each parameter's path into the key, then draws its values), and
    for the hundreds of arrays of ``configs/grvq4.py`` (495 in the generator alone) that made
    the jitted train-state initialiser the slowest program to compile. ``unsafe_rbg`` draws with
    XLA's RngBitGenerator, a single op per array; its fold-ins (one per parameter: flax hashes
    the whole path into one 32-bit value) are XORs of generator outputs. Same seed, same values
    on every mesh of one backend (tested); the values may differ across backends and XLA
    versions (the generator's algorithm is the backend's). Only the initial draws use it:
    training's keys (k-means, dead-code restarts) stay threefry.
    """
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="unsafe_rbg")


def _torch_uniform(bound: float):
    """``U(-bound, bound)``: torch's default Conv init (kaiming_uniform with a=sqrt(5))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def weight_norm_kernel(g: jax.Array, v: jax.Array) -> jax.Array:
    """``g * v / ||v||`` with the norm over every axis on which ``g`` has size 1.

    ``g`` keeps the kernel's rank (torch's ``weight_g`` permuted like ``weight_v``): a conv's
    ``[1, 1, C_out]``, a transposed conv's ``[1, C_in, 1]``. So the tree alone says how to fold.
    """
    axes = tuple(i for i, n in enumerate(g.shape) if n == 1)
    return v * (g / jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True)))


class _WeightNormed(nn.Module):
    """Mixin: a conv kernel ``[K, C_in, C_out]`` either plain or as ``g * v / ||v||``.

    ``norm_axes`` are the axes the norm runs over (all but the torch weight's dim 0): for a conv,
    dim 0 is C_out, so the norm is over (K, C_in); for a transposed conv it is C_in, over (K, C_out).
    """

    def kernel_param(self, shape: tuple[int, ...], fan_in: int, norm_axes: tuple[int, ...]):
        init = _torch_uniform(1.0 / math.sqrt(fan_in))
        if not self.weight_norm:
            return self.param("kernel", init, shape)
        v = self.param("weight_v", init, shape)
        g_shape = tuple(1 if a in norm_axes else n for a, n in enumerate(shape))
        g = self.param(
            "weight_g",
            lambda _, shape: jnp.sqrt(jnp.sum(jnp.square(v), axis=norm_axes, keepdims=True)),
            g_shape,
        )
        return weight_norm_kernel(g, v)


class Conv1d(_WeightNormed):
    """1-D convolution with explicit ``(left, right)`` padding and optional weight norm.

    ``[B, T, C_in] -> [B, floor((T + left + right - dilation*(K-1) - 1) / stride) + 1, features]``.
    ``padding=None`` means torch's symmetric ``get_padding(kernel_size, dilation)``.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding: tuple[int, int] | None = None
    weight_norm: bool = True
    kernel_init_std: float | None = None  # N(0, std) instead of torch's default (encoder conv_post)

    @nn.compact
    def kernel_and_bias(self, c_in: int) -> tuple[jax.Array, jax.Array]:
        """The (weight-normed) kernel ``[K, c_in, features]`` and the bias."""
        fan_in = c_in * self.kernel_size
        shape = (self.kernel_size, c_in, self.features)
        if self.kernel_init_std is not None and not self.weight_norm:
            kernel = self.param("kernel", nn.initializers.normal(self.kernel_init_std), shape)
        else:
            kernel = self.kernel_param(shape, fan_in, norm_axes=(0, 1))
        bias = self.param("bias", _torch_uniform(1.0 / math.sqrt(fan_in)), (self.features,))
        return kernel, bias

    @property
    def pads(self) -> tuple[int, int]:
        if self.padding is not None:
            return tuple(self.padding)
        p = get_padding(self.kernel_size, self.dilation)
        return p, p

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply_to(x, *self.kernel_and_bias(x.shape[-1]))

    def apply_to(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        """The layer with the given weights (no variables touched)."""
        y = jax.lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            window_strides=(self.stride,),
            padding=(self.pads,),
            rhs_dilation=(self.dilation,),
            dimension_numbers=_DN,
        )
        return y + bias.astype(x.dtype)

    def apply_folded(self, x, kernel, bias, length: int, f: int) -> tuple[jax.Array, int]:
        """The layer on ``x [B, blocks, f * C_in]``, time folded by ``f`` (true length
        ``length``; :mod:`~hificodec_jax.models.lane_dense`): the output folded the same way,
        zero past its true length, and that length."""
        return lane_dense.folded_layer(
            x, kernel, bias, axis=1, length=length, f=f, strides=(self.stride,),
            padding=(self.pads,), dilation=(self.dilation,),
        )  # fmt: skip


def strided_conv_padding(kernel_size: int, stride: int) -> tuple[int, int]:
    """Padding that makes a strided conv map ``T`` samples to ``floor(T / stride)`` frames.

    Equals torch's symmetric ``(K - S) // 2`` whenever ``K - S`` is even (all HiFi-Codec stages);
    odd differences put the extra sample on the right.
    """
    total = kernel_size - stride
    if total < 0:
        raise ValueError(f"kernel_size {kernel_size} must be >= stride {stride}")
    return total // 2, total - total // 2


def polyphase_taps(kernel_size: int, stride: int) -> tuple[int, int, int]:
    """(crop p, j_min, j_max) of the polyphase form of a transposed conv (see ConvTranspose1d)."""
    p = (kernel_size - stride) // 2
    j_min = min(-((r + p) // stride) for r in range(stride))
    j_max = max((kernel_size - 1 - r - p) // stride for r in range(stride))
    return p, j_min, j_max


def polyphase_kernel(kernel: jax.Array, stride: int) -> jax.Array:
    """A transposed conv's ``kernel [K, C_in, C_out]`` as the ``[n_taps, C_in, S*C_out]`` kernel
    of its stride-1 polyphase form (see :class:`ConvTranspose1d`); tap ``m`` reads input frame
    ``t + m - j_max``."""
    k, c_in, c_out = kernel.shape
    s = stride
    p, j_min, j_max = polyphase_taps(k, s)
    # Gather the torch taps into a [n_taps, C_in, S, C_out] polyphase kernel (static indices).
    n_taps = j_max - j_min + 1
    index = np.zeros((n_taps, s), np.int32)
    valid = np.zeros((n_taps, s), bool)
    for m in range(n_taps):
        j = j_max - m  # tap m reads input frame t + m - j_max = t - j
        for r in range(s):
            kk = j * s + r + p
            if 0 <= kk < k:
                index[m, r], valid[m, r] = kk, True
    poly = jnp.where(valid[:, None, :, None], kernel[index].transpose(0, 2, 1, 3), 0.0)
    return poly.reshape(n_taps, c_in, s * c_out)


class ConvTranspose1d(_WeightNormed):
    """Transposed 1-D conv computed as a stride-1 polyphase conv: ``[B, F, C_in] -> [B, F*S, C_out]``.

    Equals ``torch.nn.ConvTranspose1d(C_in, C_out, K, stride=S, padding=(K-S)//2)`` whenever
    ``K - S`` is even (then torch's output length is exactly ``F*S``); for odd ``K - S`` it is
    torch's output cropped to ``F*S`` samples. Output phase ``r`` at frame ``t`` is
    ``y[t*S + r] = sum_j x[t - j] @ W[j*S + r + p]``, so one conv from ``C_in`` to ``S*C_out``
    channels with ``j_max - j_min + 1`` taps followed by a reshape gives every phase at once
    (no zero-stuffed input, which makes training faster than the dilated-input form).
    Weight norm follows torch: ``g`` has one entry per *input* channel (dim 0 of torch's
    ``(in, out, k)`` weight).
    """

    features: int
    kernel_size: int
    stride: int
    weight_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, f, c_in = x.shape
        k, s, c_out = self.kernel_size, self.stride, self.features
        if k < s:
            raise ValueError(f"kernel_size {k} must be >= stride {s}")
        # torch's fan_in for ConvTranspose1d weight (in, out, k) is out * k.
        fan_in = c_out * k
        kernel = self.kernel_param((k, c_in, c_out), fan_in, norm_axes=(0, 2))
        bias = self.param("bias", _torch_uniform(1.0 / math.sqrt(fan_in)), (c_out,))
        _, j_min, j_max = polyphase_taps(k, s)
        poly = polyphase_kernel(kernel, s)
        y = jax.lax.conv_general_dilated(
            x,
            poly.astype(x.dtype),
            window_strides=(1,),
            padding=((j_max, -j_min),),
            dimension_numbers=_DN,
        )
        return y.reshape(b, f * s, c_out) + bias.astype(x.dtype)


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock1: for each dilation d, ``x += conv(lrelu(conv_d(lrelu(x))))``.

    ``[B, T, C] -> [B, T, C]``. Submodules ``convs1_j`` (dilated) and ``convs2_j`` (dilation 1)
    mirror the torch keys ``convs1.j`` / ``convs2.j``.
    """

    channels: int
    kernel_size: int = 3
    dilations: Sequence[int] = (1, 3, 5)
    weight_norm: bool = True

    def setup(self):
        k, wn = self.kernel_size, self.weight_norm
        self.convs1 = [Conv1d(self.channels, k, dilation=d, weight_norm=wn) for d in self.dilations]
        self.convs2 = [Conv1d(self.channels, k, weight_norm=wn) for _ in self.dilations]

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``mask [B, T]`` zeroes padded frames before every conv, so they act like torch's
        zero padding at the clip's end (then a padded clip gives its unpadded result)."""
        return self.apply_with(x, self.weights(x.shape[-1]), mask)

    def apply_with(self, x, weights, mask=None) -> jax.Array:
        """:meth:`__call__` with the given :meth:`weights` (no variables touched)."""
        convs = [c for pair in zip(self.convs1, self.convs2, strict=True) for c in pair]
        for j in range(0, len(convs), 2):
            xt = convs[j].apply_to(apply_mask(nn.leaky_relu(x, LRELU_SLOPE), mask), *weights[j])
            y = convs[j + 1].apply_to(
                apply_mask(nn.leaky_relu(xt, LRELU_SLOPE), mask), *weights[j + 1]
            )
            x = x + y
        return x

    def weights(self, c_in: int) -> list[tuple[jax.Array, jax.Array]]:
        """Every conv's ``(kernel, bias)``, in :meth:`apply_folded`'s order."""
        return [
            conv.kernel_and_bias(c_in)
            for pair in zip(self.convs1, self.convs2, strict=True)
            for conv in pair
        ]

    def apply_folded(self, x, weights, mask, f: int) -> jax.Array:
        """The block on ``x [B, T / f, f * C]`` (time folded by ``f``, ``T`` a multiple of
        ``f``) with the given :meth:`weights`; ``mask`` is folded the same way (``[B, T / f,
        f * C]`` or None)."""
        length = x.shape[1] * f
        convs = [c for pair in zip(self.convs1, self.convs2, strict=True) for c in pair]
        for j in range(0, len(convs), 2):
            xt, _ = convs[j].apply_folded(
                _masked(nn.leaky_relu(x, LRELU_SLOPE), mask), *weights[j], length, f
            )
            y, _ = convs[j + 1].apply_folded(
                _masked(nn.leaky_relu(xt, LRELU_SLOPE), mask), *weights[j + 1], length, f
            )
            x = x + y
        return x


def _masked(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return x if mask is None else x * mask.astype(x.dtype)


def resblock_reach(kernel_sizes: Sequence[int], dilations: Sequence[Sequence[int]]) -> int:
    """One-sided reach (in its own samples) of parallel :class:`ResBlock1` stacks (the widest)."""
    reach = 0
    for k, ds in zip(kernel_sizes, dilations, strict=True):
        half = (k - 1) // 2 + (k - 1) % 2
        reach = max(reach, sum(half * d + half for d in ds))
    return reach


def apply_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``x [B, T, C] * mask [B, T]`` (identity without a mask)."""
    return x if mask is None else x * mask[..., None].astype(x.dtype)


def frame_mask(lengths: jax.Array | None, frames: int) -> jax.Array | None:
    """``[B, frames]`` bool, True below each ``lengths`` entry; None without lengths."""
    if lengths is None:
        return None
    return jnp.arange(frames)[None, :] < lengths[:, None]


NORM_STATS = "norm_stats"  # collection: given statistics, see MaskedGroupNorm
NORM_INPUTS = "norm_inputs"  # collection: sown grouped inputs, see MaskedGroupNorm


class MaskedGroupNorm(nn.Module):
    """GroupNorm over (time, channels-in-group) whose statistics skip padded frames.

    ``[B, T, C]`` with an optional ``mask [B, T]``; without a mask it is exactly
    ``torch.nn.GroupNorm(num_groups, C, eps)`` (biased variance, affine ``scale``/``bias``).
    Deviation from the reference (which has no lengths): with a mask, each clip is normalised by
    the statistics of its own valid frames, so padding a clip does not change its latent.

    Whole-file statistics (for a long input processed in windows): when the ``norm_inputs``
    collection is mutable (outside ``init``), the layer sows ``(x grouped [B, T, G, C/G], mask [B, T])`` for the
    caller to pool with :func:`group_moments` over any positions; when variables
    ``norm_stats/{mean [G], var [G], use []}`` exist and ``use`` is true, it normalises with
    those statistics instead of its input's own.
    """

    num_groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, t, c = x.shape
        if c % self.num_groups:
            raise ValueError(f"{c} channels do not split into {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        xg = x.reshape(b, t, self.num_groups, c // self.num_groups)
        if self.is_mutable_collection(NORM_INPUTS) and not self.is_initializing():
            self.sow(NORM_INPUTS, "x", (xg, jnp.ones((b, t), bool) if mask is None else mask))
        xg = xg.astype(jnp.float32)  # statistics and normalisation in float32 under bf16
        if mask is None:
            mean = jnp.mean(xg, axis=(1, 3), keepdims=True)
            var = jnp.mean(jnp.square(xg - mean), axis=(1, 3), keepdims=True)
        else:
            w = mask.astype(xg.dtype)[:, :, None, None]
            n = jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0) * (c // self.num_groups)
            mean = jnp.sum(xg * w, axis=(1, 3), keepdims=True) / n
            var = jnp.sum(jnp.square(xg - mean) * w, axis=(1, 3), keepdims=True) / n
        if self.has_variable(NORM_STATS, "mean"):
            use = self.get_variable(NORM_STATS, "use")
            mean = jnp.where(use, self.get_variable(NORM_STATS, "mean")[:, None], mean)
            var = jnp.where(use, self.get_variable(NORM_STATS, "var")[:, None], var)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(b, t, c)
        return (y * scale + bias).astype(x.dtype)


def group_moments(xg: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(count, mean [G], M2 [G])`` of grouped values ``xg [B, T, G, C/G]`` over the positions
    where ``weight [B, T]`` is true (``M2``: sum of squared deviations from ``mean``)."""
    w = weight.astype(xg.dtype)[:, :, None, None]
    n = jnp.sum(w) * xg.shape[3]
    mean = jnp.sum(xg * w, axis=(0, 1, 3)) / jnp.maximum(n, 1.0)
    m2 = jnp.sum(jnp.square(xg - mean[:, None]) * w, axis=(0, 1, 3))
    return n, mean, m2


def fold_weight_norm(tree):
    """Replace every ``{weight_g, weight_v}`` pair in a param tree by the equivalent ``kernel``.

    The result feeds modules built with ``weight_norm=False`` (inference): same outputs, no norm
    computed per call.
    """
    if not hasattr(tree, "items"):
        return tree
    out = {}
    for name, sub in tree.items():
        if hasattr(sub, "items") and "weight_v" in sub and "weight_g" in sub:
            out[name] = {k: val for k, val in sub.items() if k not in ("weight_g", "weight_v")}
            out[name]["kernel"] = weight_norm_kernel(sub["weight_g"], sub["weight_v"])
        else:
            out[name] = fold_weight_norm(sub)
    return out
