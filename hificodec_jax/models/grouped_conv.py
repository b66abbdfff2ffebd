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
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["dimension_numbers", "looped_grouped_conv"]


def dimension_numbers(rank: int) -> tuple[str, str, str]:
    """Channels-last ``dimension_numbers`` for 1-D or 2-D convs (XLA CPU's canonical form)."""
    if rank == 1:
        return ("NWC", "WIO", "NWC")
    if rank == 2:
        return ("NHWC", "HWIO", "NHWC")
    raise ValueError(f"only 1-D and 2-D convolutions are supported, got {rank} spatial axes")


def _dense_conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    """Stride-1 channels-last conv ``x [B, *S, I] x kernel [*K, I, O]`` in canonical form."""
    rank = x.ndim - 2
    return jax.lax.conv_general_dilated(
        x, kernel, (1,) * rank, tuple(padding), dimension_numbers=dimension_numbers(rank)
    )


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
        ksize = kernel.shape[:rank]
        # Input gradient: per group, the kernel flipped in space with I and O swapped.
        k_in = kernel.reshape(*ksize, ci, groups, co)
        k_in = jnp.flip(jnp.moveaxis(k_in, (-2, -1, -3), (0, -2, -1)), tuple(range(1, 1 + rank)))
        pad_in = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(ksize, padding, strict=True))

        def input_grad(g, dx):
            return _set_channels(dx, _dense_conv(_channels(dy, g, co), k_in[g], pad_in), g, ci)

        def kernel_grad(g, dk):
            # x as [ci, *S, B] (channels as batch), dy as [*S', B, co]. The barrier keeps XLA
            # from folding these transposes back into the convolution.
            x_t, dy_t = jax.lax.optimization_barrier(
                (
                    jnp.moveaxis(_channels(x, g, ci), (0, -1), (-1, 0)),
                    jnp.moveaxis(_channels(dy, g, co), 0, -2),
                )
            )
            return jax.lax.dynamic_update_index_in_dim(dk, _dense_conv(x_t, dy_t, padding), g, 0)

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
