"""The HiFi-GAN decoder as a per-layer streaming pass over one chunk (see
:mod:`hificodec_jax.models.streaming` for the design, the state and the public API).

:class:`Walk` runs the decoder's layers on a chunk, reading and writing each layer's buffer (left
context, delay line) and tracking every signal's delay so that masks at the sequence's ends and
the sums of parallel branches line up.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hificodec_jax.models.hifigan import HifiDecoder
from hificodec_jax.models.layers import (
    LRELU_SLOPE,
    polyphase_kernel,
    polyphase_taps,
    weight_norm_kernel,
)

CAP = 1 << 20  # frames: clamp for the time arithmetic so int32 never overflows on long streams


@dataclasses.dataclass(frozen=True)
class LayerDelay:
    """One layer's share of the lookahead: its right context, in its own samples and frames."""

    name: str
    rate: int  # samples per frame at this layer
    right: int  # right context waited for, in this layer's samples
    frames: float  # right / rate
    start: int  # delay of the layer's input, in output samples


def kernel_of(p: dict) -> jax.Array:
    """A conv's kernel from its params, weight-normed (``weight_g``/``weight_v``) or folded."""
    if "kernel" in p:
        return p["kernel"]
    return weight_norm_kernel(p["weight_g"], p["weight_v"])


@dataclasses.dataclass
class Signal:
    x: jax.Array  # [B, n * rate, C]
    rate: int  # samples per frame
    delay: int  # in output samples (hop / rate per own sample)


class Walk:
    """One pass of the decoder over a chunk: reads and writes the per-layer buffers.

    With ``buffers=None`` (planning, under ``jax.eval_shape``) every buffer starts at zero.
    ``alloc`` maps each layer to the right context it waits for (None: all of it, exact).
    """

    def __init__(self, hop, frames, ended, end, buffers, alloc, dtype):
        self.hop, self.frames, self.ended, self.end = hop, frames, ended, end
        self.buffers_in, self.buffers = buffers, {}
        self.alloc, self.dtype = alloc, dtype
        self.delays: list[LayerDelay] = []
        self.branch_ends: dict[str, tuple[int, int]] = {}  # ResBlock -> (its delay, stage's)

    def unit(self, sig: Signal) -> int:
        return self.hop // sig.rate

    def mask(self, sig: Signal, start: int = 0, length: int | None = None) -> jax.Array:
        """``[B, length]`` True on samples inside the stream (time >= 0 and before its end), for
        the chunk's samples ``start .. start + length - 1`` (negative: the samples before it)."""
        n = sig.x.shape[1] if length is None else length
        d = sig.delay // self.unit(sig)
        i = jnp.arange(start, start + n, dtype=jnp.int32)[None, :]
        started = jnp.minimum(self.frames, CAP) * sig.rate - d + i >= 0
        since = jnp.clip(self.frames - self.end, -CAP, CAP)[:, None]
        before_end = ~self.ended[:, None] | (since * sig.rate - d + i < 0)
        return started & before_end

    def buffer(self, name: str, length: int, like: jax.Array) -> jax.Array:
        shape = (like.shape[0], length, like.shape[2])
        if self.buffers_in is None:
            return jnp.zeros(shape, like.dtype)
        buf = self.buffers_in[name]
        if buf.shape != shape:
            raise ValueError(f"stream state buffer {name} has shape {buf.shape}, expected {shape}")
        return buf.astype(like.dtype)

    def take(self, name: str, sig: Signal, right: int) -> int:
        """The right context a layer waits for: all of it, or its allocation."""
        r = right if self.alloc is None else self.alloc[name]
        self.delays.append(LayerDelay(name, sig.rate, r, r / sig.rate, sig.delay))
        return r

    def conv(self, name, sig, kernel, bias, left, right, dilation=1, lrelu=True) -> Signal:
        """Stride-1 conv of ``sig`` lrelu'd (unless ``lrelu`` is false) and zeroed outside the
        stream, as every decoder conv reads it, whose taps read offsets ``-left .. right`` (step
        ``dilation``). See :meth:`conv_and_input`."""
        return self.conv_and_input(name, sig, kernel, bias, left, right, dilation, lrelu)[0]

    def conv_and_input(self, name, sig, kernel, bias, left, right, dilation=1, lrelu=True):
        """(:meth:`conv`'s output, ``delayed``): ``delayed(k)`` is ``sig`` delayed by ``k <=
        left + right`` of its samples, read from the conv's window (a ResBlock's residual
        needs no delay line of its own).

        The buffer keeps the raw input, activated again each push with the mask of its time.
        ``kernel`` may also be a tuple of ``(kernel, first tap)`` pieces that read taps
        ``first .. first + len - 1`` of the window, their outputs concatenated on channels (a
        transposed conv's phase groups without their zero taps)."""
        r = self.take(name, sig, right)
        x = sig.x
        n = x.shape[1]
        keep = left + r
        raw = jnp.concatenate([self.buffer(name, keep, x), x], axis=1) if keep else x
        if keep:
            self.buffers[name] = raw[:, -keep:]
        window = nn.leaky_relu(raw, LRELU_SLOPE) if lrelu else raw
        window = window * self.mask(sig, -keep, keep + n)[..., None].astype(x.dtype)
        if right > r:  # inputs not waited for read as zero (decode's end-of-sequence padding)
            pad = jnp.zeros((x.shape[0], right - r, x.shape[2]), x.dtype)
            window = jnp.concatenate([window, pad], axis=1)
        pieces = kernel if isinstance(kernel, tuple) else ((kernel, 0),)
        ys = [
            jax.lax.conv_general_dilated(
                window[:, first : first + n + dilation * (w.shape[0] - 1)],
                w.astype(x.dtype),
                window_strides=(1,),
                padding=((0, 0),),
                rhs_dilation=(dilation,),
                dimension_numbers=("NWC", "WIO", "NWC"),
            )
            for w, first in pieces
        ]
        y = jnp.concatenate(ys, axis=2) if len(ys) > 1 else ys[0]
        if bias is not None:
            y = y + bias.astype(y.dtype)

        def delayed(k: int) -> jax.Array:
            if not 0 <= k <= keep:
                raise AssertionError(f"{name}: a delay of {k} is outside its window ({keep})")
            return raw[:, keep - k : keep - k + n]

        return Signal(y, sig.rate, sig.delay + r * self.unit(sig)), delayed

    def delay(self, name: str, sig: Signal, samples: int) -> Signal:
        """Delay ``sig`` by ``samples`` of its own rate (a delay line)."""
        if samples == 0:
            return sig
        n = sig.x.shape[1]
        window = jnp.concatenate([self.buffer(name, samples, sig.x), sig.x], axis=1)
        self.buffers[name] = window[:, n:]
        return Signal(window[:, :n], sig.rate, sig.delay + samples * self.unit(sig))


def resblock(walk: Walk, name: str, params: dict, kernel_size, dilations, sig: Signal) -> Signal:
    """:class:`~hificodec_jax.models.layers.ResBlock1` on a chunk; each residual is read from
    its first conv's window, delayed by the two convs' right contexts."""
    half = (kernel_size - 1) // 2
    for j, d in enumerate(dilations):
        p1, p2 = params[f"convs1_{j}"], params[f"convs2_{j}"]
        t, delayed = walk.conv_and_input(
            f"{name}/convs1_{j}", sig, kernel_of(p1), p1["bias"], d * half, d * half, d
        )
        t = walk.conv(f"{name}/convs2_{j}", t, kernel_of(p2), p2["bias"], half, half)
        res = delayed((t.delay - sig.delay) // walk.unit(sig))
        sig = Signal(res + t.x, sig.rate, t.delay)
    return sig


def decode_chunk(walk: Walk, dec: HifiDecoder, params: dict, z_q: jax.Array) -> Signal:
    """The decoder on one chunk ``z_q [B, n, D]`` -> samples ``[B, n * hop, 1]`` (pre-tanh)."""
    for k in dec.resblock_kernel_sizes:
        if k % 2 == 0:
            raise ValueError(f"streaming needs odd ResBlock kernel sizes, got {k}")
    sig = Signal(z_q.astype(walk.dtype), 1, 0)
    p = params["conv_pre"]
    half = (kernel_of(p).shape[0] - 1) // 2
    sig = walk.conv("conv_pre", sig, kernel_of(p), p["bias"], half, half, lrelu=False)
    n_k = len(dec.resblock_kernel_sizes)
    for i, (u, k) in enumerate(zip(dec.upsample_rates, dec.upsample_kernel_sizes, strict=True)):
        p = params[f"ups_{i}"]
        _, j_min, j_max = polyphase_taps(k, u)
        kernels = p["poly"] if "poly" in p else polyphase_pieces(kernel_of(p), k, u)
        pieces = tuple(zip(kernels, (g[0] for g in polyphase_groups(k, u)), strict=True))
        t = walk.conv(f"ups_{i}", sig, pieces, None, j_max, -j_min)
        b, f, c = t.x.shape
        x = t.x.reshape(b, f * u, c // u) + p["bias"].astype(t.x.dtype)
        sig = Signal(x, sig.rate * u, t.delay)
        outs = []
        for j in range(n_k):
            n = i * n_k + j
            outs.append(
                resblock(
                    walk,
                    f"resblocks_{n}",
                    params[f"resblocks_{n}"],
                    dec.resblock_kernel_sizes[j],
                    tuple(dec.resblock_dilations[j]),
                    sig,
                )
            )
        latest = max(o.delay for o in outs)
        for j, o in enumerate(outs):
            walk.branch_ends[f"resblocks_{i * n_k + j}"] = (o.delay, latest)
        unit = walk.unit(sig)
        xs = None
        for j, o in enumerate(outs):
            o = walk.delay(f"align_{i * n_k + j}", o, (latest - o.delay) // unit)
            xs = o.x if xs is None else xs + o.x
        sig = Signal(xs / n_k, sig.rate, latest)
    p = params["conv_post"]
    half = (kernel_of(p).shape[0] - 1) // 2
    return walk.conv("conv_post", sig, kernel_of(p), p["bias"], half, half)


def polyphase_groups(kernel_size: int, stride: int) -> tuple[tuple[int, int, int, int], ...]:
    """The polyphase form's phases grouped by the taps they read: ``(m_lo, m_hi, r_lo, r_hi)``,
    phases ``r_lo .. r_hi - 1`` read only taps ``m_lo .. m_hi - 1`` of
    :func:`~hificodec_jax.models.layers.polyphase_kernel` (their other taps are zero; for
    grvq4's ``ups_0``, two groups of two taps each where the kernel has three)."""
    p, j_min, j_max = polyphase_taps(kernel_size, stride)
    groups: list[tuple[int, int, int, int]] = []
    for r in range(stride):
        taps = [
            m for m in range(j_max - j_min + 1) if 0 <= (j_max - m) * stride + r + p < kernel_size
        ]
        lo, hi = taps[0], taps[-1] + 1  # contiguous: the valid taps of a phase are a range
        if groups and groups[-1][:2] == (lo, hi):
            groups[-1] = (lo, hi, groups[-1][2], r + 1)
        else:
            groups.append((lo, hi, r, r + 1))
    return tuple(groups)


def polyphase_pieces(kernel: jax.Array, kernel_size: int, stride: int) -> tuple:
    """A transposed conv's polyphase kernel without its zero taps: one kernel per phase group
    (:func:`polyphase_groups`). A push reads every weight of the decoder, so ``ups_0`` without
    its zero taps (grvq4: 8.4 of 12.6 MB) moves a third less."""
    poly = polyphase_kernel(kernel, stride)
    c_out = poly.shape[2] // stride
    return tuple(
        poly[lo:hi, :, r_lo * c_out : r_hi * c_out]
        for lo, hi, r_lo, r_hi in polyphase_groups(kernel_size, stride)
    )


def decode_codes(module, codes):
    return module.quantizer.decode_codes(codes)
