"""Grouped convolutions as one dense convolution per group, looped, with a hand-written VJP.

Why: XLA CPU's grouped convolution (``feature_group_count``) runs several times slower than
dense convolutions of the same total size. One dense conv per group on channel slices, unrolled,
is fast but every group is a separate op, so MSD's 16-group layers made it the largest part of
the train step's compile. Here the groups run in a loop (``fori_loop``; each iteration slices
one group's channels, runs one dense conv and writes its output channels in place), so each
layer compiles once, not once per group. This is XLA CPU's form only: on GPU and TPU the model
uses XLA's grouped convolution (the choice is made per platform in
:func:`hificodec_jax.models.strided_conv.space_to_depth_conv`).

The VJP is written by hand because XLA CPU emits a convolution as a fast (Eigen) library call
only in its canonical form (input ``NWC``, kernel ``WIO``, output ``NWC``): in the main program
it inserts the transposes that make jax's gradient convolutions canonical, but not inside a
loop body, where they run as naive loops, far slower. So the backward pass is two more loops
of canonical convolutions:

* input gradient: ``dx = conv(dy, flip(W)^T)`` with padding ``(K-1-lo, K-1-hi)`` per axis (the
  flipped, transposed kernels are made once, outside the loop);
* kernel gradient: ``dW = conv(x^T, dy^T)``, the batch and channel axes of ``x`` swapped and the
  output gradient used as the kernel (``[*S_out, B, C_out]``), padding ``(lo, hi)``. The two
  transposes sit behind an ``optimization_barrier`` so that XLA cannot fold them back into the
  convolution's dimension numbers.

Both are exact: the same sums as jax's own transpose rules (bit-equal gradients on MSD). The
price is more XLA temporaries than unrolled groups: the loops hold whole-layer output and
gradient buffers (figures in docs/performance-notes.md).

:func:`dense_conv` is one dense conv with the same hand-written VJP (and rhs dilation). XLA CPU
makes convolutions canonical in the program's top level only, not inside conditionals either,
and a ``lax.platform_dependent`` choice inside a ``shard_map`` body
(:func:`hificodec_jax.training.sharding.on_own_rows`, multi-device training) is still a
conditional at that point: there the MS-STFT discriminator's 2-D gradient convolutions ran as
naive loops (the tiny train step on 8 CPU devices: 2.8 s against 0.22 s at the tests'
optimisation level 0).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["dense_conv", "dimension_numbers", "looped_grouped_conv"]


def dimension_numbers(rank: int) -> tuple[str, str, str]:
    """Channels-last ``dimension_numbers`` for 1-D or 2-D convs (XLA CPU's canonical form)."""
    if rank == 1:
        return ("NWC", "WIO", "NWC")
    if rank == 2:
        return ("NHWC", "HWIO", "NHWC")
    raise ValueError(f"only 1-D and 2-D convolutions are supported, got {rank} spatial axes")


def _dense_conv(x: jax.Array, kernel: jax.Array, padding, dilation=None, strides=None):
    """Channels-last conv ``x [B, *S, I] x kernel [*K, I, O]`` in canonical form."""
    rank = x.ndim - 2
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides or (1,) * rank,
        tuple(padding),
        rhs_dilation=dilation,
        dimension_numbers=dimension_numbers(rank),
    )


def _flipped_transposed(kernel: jax.Array, lead: int = 0) -> jax.Array:
    """``kernel [*lead, *K, I, O]`` flipped in space, I and O swapped: the input gradient's."""
    rank = kernel.ndim - 2 - lead
    return jnp.flip(jnp.swapaxes(kernel, -1, -2), tuple(range(lead, lead + rank)))


def _input_grad(dy, k_t, ksize, padding, dilation):
    """``dx`` of a stride-1 conv from ``dy [B, *S', O]`` and ``k_t [*K, O, I]``, canonical."""
    pad = tuple(
        (d * (k - 1) - lo, d * (k - 1) - hi)
        for k, (lo, hi), d in zip(ksize, padding, dilation, strict=True)
    )
    return _dense_conv(dy, k_t, pad, dilation)


def _kernel_grad(x, dy, padding, dilation):
    """``dW [I, *K, O]`` of a stride-1 conv: ``x`` with batch and channels swapped, convolved
    with ``dy [*S', B, O]`` as the kernel (a window stride of the dilation). The barrier keeps
    XLA from folding the transposes back into the convolution's dimension numbers."""
    x_t, dy_t = jax.lax.optimization_barrier(
        (jnp.moveaxis(x, (0, -1), (-1, 0)), jnp.moveaxis(dy, 0, -2))
    )
    return _dense_conv(x_t, dy_t, padding, strides=dilation)


def _channels(a: jax.Array, g, n: int) -> jax.Array:
    """Channels ``[g*n, (g+1)*n)`` of ``a [..., C]`` (``g`` may be traced)."""
    return jax.lax.dynamic_slice_in_dim(a, g * n, n, axis=a.ndim - 1)


def _set_channels(a: jax.Array, update: jax.Array, g, n: int) -> jax.Array:
    """``a`` with channels ``[g*n, (g+1)*n)`` replaced by ``update`` (in place in a loop)."""
    return jax.lax.dynamic_update_slice_in_dim(a, update, g * n, axis=a.ndim - 1)


@functools.cache
def _conv_for(padding: tuple[tuple[int, int], ...], groups: int):
    """The grouped conv ``x [B, *S, G*ci] x kernel [*K, ci, G*co] -> [B, *S', G*co]``.

    Each loop iteration slices one group's channels and writes its result in place, so no
    whole-layer group-major copy is made; the residuals are the inputs themselves.
    """

    def forward(x, kernel):
        ci, co = x.shape[-1] // groups, kernel.shape[-1] // groups

        def one_group(g, y):
            y_g = _dense_conv(_channels(x, g, ci), _channels(kernel, g, co), padding)
            return _set_channels(y, y_g, g, co)

        shape = jax.eval_shape(lambda: _dense_conv(x[..., :ci], kernel[..., :co], padding)).shape
        return jax.lax.fori_loop(
            0, groups, one_group, jnp.zeros((*shape[:-1], groups * co), x.dtype)
        )

    @jax.custom_vjp
    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return forward(x, kernel)

    def fwd(x, kernel):
        return forward(x, kernel), (x, kernel)

    def bwd(res, dy):
        x, kernel = res
        rank = x.ndim - 2
        ci, co = x.shape[-1] // groups, kernel.shape[-1] // groups
        ksize, ones = kernel.shape[:rank], (1,) * rank
        # Input gradient: per group, the kernel flipped in space with I and O swapped.
        k_in = jnp.moveaxis(kernel.reshape(*ksize, ci, groups, co), -2, 0)  # [G, *K, ci, co]
        k_in = _flipped_transposed(k_in, lead=1)

        def input_grad(g, dx):
            dx_g = _input_grad(_channels(dy, g, co), k_in[g], ksize, padding, ones)
            return _set_channels(dx, dx_g, g, ci)

        def kernel_grad(g, dk):
            dk_g = _kernel_grad(_channels(x, g, ci), _channels(dy, g, co), padding, ones)
            return jax.lax.dynamic_update_index_in_dim(dk, dk_g, g, 0)

        # Two loops, so that XLA drops the kernel gradient's where only dx is used (a
        # discriminator in the generator's phase).
        dx = jax.lax.fori_loop(0, groups, input_grad, jnp.zeros_like(x))
        dk = jnp.zeros((groups, ci, *ksize, co), kernel.dtype)  # [G, ci, *K, co]
        dk = jax.lax.fori_loop(0, groups, kernel_grad, dk)
        dk = jnp.moveaxis(dk, (0, 1), (-2, -3))  # [*K, ci, G, co]
        return dx, dk.reshape(kernel.shape)

    conv.defvjp(fwd, bwd)
    return conv


def looped_grouped_conv(
    x: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]], groups: int
) -> jax.Array:
    """Stride-1, undilated grouped conv ``x [B, *S, G*ci] x kernel [*K, ci, G*co]`` (1-D or 2-D).

    Same function as ``lax.conv_general_dilated(..., feature_group_count=groups)`` in
    channels-last layout, computed as described in the module docstring.
    """
    rank = x.ndim - 2
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(padding) != rank:
        raise ValueError(f"padding must have {rank} entries, got {padding}")
    if x.shape[-1] % groups or kernel.shape[-1] % groups:
        raise ValueError(f"channels {x.shape[-1]}->{kernel.shape[-1]} do not split into {groups}")
    # The scope names the loops in the program's metadata (tests find them by it).
    with jax.named_scope("looped_grouped_conv"):
        return _conv_for(padding, groups)(x, kernel)


@functools.cache
def _dense_conv_for(padding: tuple[tuple[int, int], ...], dilation: tuple[int, ...]):
    """The stride-1 dense conv with the canonical hand-written VJP (module docstring)."""

    @jax.custom_vjp
    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return _dense_conv(x, kernel, padding, dilation)

    def fwd(x, kernel):
        return _dense_conv(x, kernel, padding, dilation), (x, kernel)

    def bwd(res, dy):
        x, kernel = res
        ksize = kernel.shape[: x.ndim - 2]
        dx = _input_grad(dy, _flipped_transposed(kernel), ksize, padding, dilation)
        dk = _kernel_grad(x, dy, padding, dilation)  # [I, *K, O]
        return dx, jnp.moveaxis(dk, 0, -2)

    conv.defvjp(fwd, bwd)
    return conv


def dense_conv(
    x: jax.Array,
    kernel: jax.Array,
    padding: Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
) -> jax.Array:
    """Stride-1 dense conv ``x [B, *S, I] x kernel [*K, I, O]`` (1-D or 2-D) whose gradients
    are canonical convolutions wherever it sits in the program (module docstring).

    Same function as ``lax.conv_general_dilated`` in channels-last layout. A padding wider than
    the dilated kernel's reach (which the input gradient would have to crop) takes XLA's own
    VJP.
    """
    rank = x.ndim - 2
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    dil = tuple(int(d) for d in rhs_dilation) if rhs_dilation is not None else (1,) * rank
    if len(padding) != rank or len(dil) != rank:
        raise ValueError(f"padding and dilation must have {rank} entries, got {padding}, {dil}")
    reach = [d * (k - 1) for d, k in zip(dil, kernel.shape[:rank], strict=True)]
    if any(max(lo, hi) > r for (lo, hi), r in zip(padding, reach, strict=True)):
        return _dense_conv(x, kernel, padding, dil)
    return _dense_conv_for(padding, dil)(x, kernel)
