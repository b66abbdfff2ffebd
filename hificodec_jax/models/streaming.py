"""Streaming decode of HiFi-Codec codes: each frame decoded once, exact with full lookahead.

The HiFi-GAN decoder (:class:`~hificodec_jax.models.hifigan.HifiDecoder`) is purely
convolutional, so its output at a sample depends on a finite window of codes. The streamer keeps
per-layer state instead of re-decoding a window: every convolution keeps the last ``a + r``
samples of its input, where ``a`` is its left reach and ``r`` the right context it waits for;
each transposed convolution is a stride-1 polyphase convolution
(:func:`~hificodec_jax.models.layers.polyphase_kernel`, without its zero taps) treated the same
way; each residual is read, delayed, from its ResBlock's first convolution's window, and the
parallel ResBlocks of a stage are delayed by short delay lines so that the sums line up. A push
of ``n`` frames then computes exactly ``n`` frames' worth of every layer.

How the lookahead adds up. A symmetric ("same") convolution with right reach ``b`` (``b =
d * (K - 1) / 2``) can only produce the output at time ``t`` once its input at ``t + b`` exists,
so it delays its signal by ``b`` of its own samples; a transposed convolution by ``-j_min`` input
frames (:func:`~hificodec_jax.models.layers.polyphase_taps`). Delays along a chain add up; the
parallel ResBlocks of a stage cost the largest of their delays. In output samples
(``hop / rate`` per sample of a layer running at ``rate`` samples per frame), for grvq4 and the
16 kHz released model (hop 320; ResBlock kernels 3/7/11, dilations 1/3/5)::

    layer                       waits for (its own samples)      output samples
    conv_pre (k7)               3 frames                         3 * 320 =  960
    ups_0 (k16, x8)             1 input frame                    1 * 320 =  320
    stage 0 ResBlocks (x8)      k11: 5 * (1 + 3 + 5) + 3 * 5     60 * 40 = 2400
    ups_1, stage 1 (x40)        1 input sample; 60               40 + 60 * 8 = 520
    ups_2, stage 2 (x160)       1 input sample; 60               8 + 60 * 2  = 128
    ups_3, stage 3 (x320)       1 input sample; 60               2 + 60      =  62
    conv_post (k7)              3                                              3
    total                                                        4393 = 13.7 frames

(the k11 ResBlock is the widest of each stage's three; :func:`layer_delays` lists every layer),
so ``exact_lookahead_frames`` is 14 frames (280 ms at 16 kHz); the output lags the codes by that
many whole frames (a final delay line pads the delay to whole frames).
:func:`algorithmic_latency` adds one chunk. :func:`layer_delays` lists every layer's share.

Smaller lookahead (approximate). ``lookahead_frames < exact_lookahead_frames`` hands the budget
out from the output backwards: the high-rate layers near the output cost little lookahead
(everything after the first stage costs 2.2 frames on grvq4) and get their full context first,
then the frame-rate ones get what is left (the parallel ResBlocks of a stage share one budget).
Inputs a layer does not wait for are taken as zero, what
``decode`` pads a layer's input with at the end of the sequence. Each frame is still computed
once; the output is approximate (and, within a chunk, uses the real future frames it has), and
it never depends on codes pushed later.

Sequence ends. A layer's input at a negative time, or at or past its stream's end, is zeroed,
which is what ``Codec.decode`` (zero padding, ``frame_lengths`` masks) does; so the
concatenation of every step's output, less the first ``lookahead_frames * hop`` samples, and of
:func:`flush` equals ``codec.apply(variables, codes, frame_lengths, method="decode")``, streams
that ended early being zero past their end.

Functional form (pure, jittable, usable in ``lax.scan``)::

    variables = prepare(codec, variables)                # optional: per-push constants once
    state = init(codec, variables, batch)                # StreamState pytree
    pcm, state = step(codec, variables, state, codes)    # codes [B, n, L*G] -> pcm [B, n*hop]
    state = end_streams(state, which)                    # which [B] bool: these streams end now
    tail, state = flush(codec, variables, state, n)      # [B, lookahead_frames * hop]

``step``'s ``pcm`` covers output samples ``[(N - lookahead) * hop, N * hop)`` where ``N`` is the
number of frames pushed including this chunk (samples at negative times are zero).
:class:`~hificodec_jax.models.decode_stream.DecodeStream` wraps this for any push size with host-side checks.

Only the HiFi-GAN family streams: the SEANet family's LSTM has an unbounded receptive field.
"""

from __future__ import annotations

import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hificodec_jax.models.hifigan import HifiDecoder
from hificodec_jax.models.layers import fold_weight_norm
from hificodec_jax.models.streaming_graph import (
    LayerDelay,
    Signal,
    Walk,
    decode_chunk,
    decode_codes,
    polyphase_pieces,
)

__all__ = [
    "LayerDelay",
    "StreamState",
    "algorithmic_latency",
    "end_streams",
    "exact_lookahead_frames",
    "flush",
    "init",
    "layer_delays",
    "prepare",
    "step",
]


@flax.struct.dataclass
class StreamState:
    """The state of ``B`` streams between pushes (a pytree; the static fields are hashable)."""

    frames: jax.Array  # [] int32 frames pushed so far (the same for every stream)
    ended: jax.Array  # [B] bool streams that have ended
    end: jax.Array  # [B] int32 frame count at which each ended stream ended
    buffers: dict  # layer name -> [B, samples, C] left context / delay line
    lookahead_frames: int = flax.struct.field(pytree_node=False)
    num_streams: int = flax.struct.field(pytree_node=False)  # codes per frame, L*G
    exact: bool = flax.struct.field(pytree_node=False)  # every layer waits for its full context


def check_streamable(codec) -> None:
    """ValueError unless ``codec``'s decoder can stream (the HiFi-GAN family)."""
    if not isinstance(getattr(codec, "decoder", None), HifiDecoder):
        name = type(getattr(codec, "decoder", codec)).__name__
        raise ValueError(
            f"streaming decode supports the HiFi-GAN decoder family only, got {name} (the SEANet "
            "family's LSTM has an unbounded receptive field)"
        )


def _run(codec, variables, state_parts, codes, alloc, lookahead_frames):
    """One step: codes ``[B, n, S]`` -> (pcm ``[B, n * hop]``, new buffers)."""
    frames, ended, end, buffers = state_parts
    z_q = codec.apply(variables, codes, method=decode_codes)
    walk = Walk(codec.hop, frames, ended, end, buffers, alloc, codec.dtype)
    out = decode_chunk(walk, codec.decoder, variables["params"]["decoder"], z_q)
    y = Signal(jnp.tanh(out.x.astype(jnp.float32)), out.rate, out.delay)
    pad = lookahead_frames * codec.hop - y.delay
    if pad < 0:
        raise AssertionError(f"lookahead {lookahead_frames} frames is less than the delay")
    y = walk.delay("output", y, pad)
    pcm = (y.x * walk.mask(y)[..., None])[..., 0]
    return pcm, walk.buffers


def _plan(codec, variables, batch: int, num_streams: int, lookahead_frames: int | None):
    """(buffer shapes, final delay in samples, layer delays, ResBlock ends) under
    ``jax.eval_shape``. ``lookahead_frames`` None plans the exact streamer without its output
    delay line."""
    found = {}
    alloc = None if lookahead_frames is None else _allocation(codec, lookahead_frames)

    def fn(v):
        codes = jnp.zeros((batch, 1, num_streams), jnp.int32)
        frames, ended, end = (
            jnp.zeros((), jnp.int32),
            jnp.zeros((batch,), bool),
            jnp.zeros((batch,), jnp.int32),
        )
        z_q = codec.apply(v, codes, method=decode_codes)
        walk = Walk(codec.hop, frames, ended, end, None, alloc, codec.dtype)
        out = decode_chunk(walk, codec.decoder, v["params"]["decoder"], z_q)
        found["delay"], found["delays"], found["ends"] = out.delay, walk.delays, walk.branch_ends
        if lookahead_frames is not None:
            y = Signal(out.x[..., :1].astype(jnp.float32), out.rate, out.delay)
            walk.delay("output", y, lookahead_frames * codec.hop - out.delay)
        return walk.buffers

    shapes = jax.eval_shape(fn, variables)
    return shapes, found["delay"], found["delays"], found["ends"]


@functools.lru_cache(maxsize=64)
def _exact_plan(codec):
    """(exact delay in output samples, layer delays, ResBlock ends) of ``codec`` (shapes only)."""
    num_streams = codec.quantizer.num_levels * codec.quantizer.num_groups
    _, delay, delays, ends = _plan(codec, _shape_variables(codec), 1, num_streams, None)
    return delay, tuple(delays), ends


@functools.lru_cache(maxsize=64)
def _allocation(codec, lookahead_frames: int) -> dict[str, int] | None:
    """Right context per layer for ``lookahead_frames`` (None when that is exact).

    The budget goes to the layers nearest the output first: a layer waits for what the budget
    leaves after every later layer's full context (a ResBlock's later layers, then the stages
    after its own), so the cheap high-rate layers are exact before the costly frame-rate ones.
    """
    total, delays, ends = _exact_plan(codec)
    if lookahead_frames * codec.hop >= total:
        return None
    budget, alloc = lookahead_frames * codec.hop, {}
    for d in delays:
        unit = codec.hop // d.rate
        branch = d.name.split("/")[0]
        if branch in ends:  # inside one of a stage's parallel ResBlocks
            branch_end, stage_end = ends[branch]
            after = total - stage_end + branch_end - d.start - d.right * unit
        else:
            after = total - d.start - d.right * unit
        alloc[d.name] = max(0, min(d.right, (budget - after) // unit))
    return alloc


@functools.lru_cache(maxsize=16)
def _shape_variables(codec):
    """Variable shapes of ``codec`` (no values): enough for planning."""
    wav = jnp.zeros((1, codec.hop * 2), jnp.float32)
    return jax.eval_shape(lambda k: codec.init(k, wav), jax.random.key(0))


def exact_lookahead_frames(codec) -> int:
    """Frames of lookahead that make streamed output equal whole decoding: the sum of every
    layer's right context (module docstring), rounded up to whole frames."""
    check_streamable(codec)
    return math.ceil(_exact_plan(codec)[0] / codec.hop)


def exact_delay_samples(codec) -> int:
    """The exact streamer's delay before its final delay line, in output samples."""
    check_streamable(codec)
    return _exact_plan(codec)[0]


def layer_delays(codec, lookahead_frames: int | None = None) -> list[LayerDelay]:
    """Each layer's right context (its share of the lookahead), in network order."""
    check_streamable(codec)
    if lookahead_frames is None or lookahead_frames >= exact_lookahead_frames(codec):
        return list(_exact_plan(codec)[1])
    num_streams = codec.quantizer.num_levels * codec.quantizer.num_groups
    return list(_plan(codec, _shape_variables(codec), 1, num_streams, lookahead_frames)[2])


def algorithmic_latency(
    codec, sample_rate: float, chunk_frames: int = 1, lookahead_frames: int | None = None
) -> float:
    """Seconds from a frame's codes to its audio: (lookahead + one chunk) x hop / sample_rate.

    ``lookahead_frames`` None means :func:`exact_lookahead_frames`.
    """
    look = exact_lookahead_frames(codec) if lookahead_frames is None else lookahead_frames
    return (look + chunk_frames) * codec.hop / sample_rate


def prepare(codec, variables) -> dict:
    """``variables`` with the decoder's per-push constants computed once: weight norm folded and
    each transposed conv's polyphase kernel gathered and split by phase group, without its zero
    taps (on grvq4, ``ups_0``'s gather took a fifth of a 1-frame push). :func:`step` takes these
    or the codec's own variables; they are for streaming only (``codec.apply`` cannot decode
    with them)."""
    check_streamable(codec)
    decoder = dict(fold_weight_norm(variables["params"]["decoder"]))
    rates = codec.decoder.upsample_rates
    for i, (u, k) in enumerate(zip(rates, codec.decoder.upsample_kernel_sizes, strict=True)):
        p = decoder[f"ups_{i}"]
        if "poly" not in p:
            decoder[f"ups_{i}"] = {"poly": polyphase_pieces(p["kernel"], k, u), "bias": p["bias"]}
    return {**variables, "params": {**variables["params"], "decoder": decoder}}


def _check_common(codec, variables, batch, lookahead_frames, num_levels):
    check_streamable(codec)
    if not isinstance(variables, dict | flax.core.FrozenDict) or "params" not in variables:
        raise ValueError("variables must be the codec's variables ({'params': ..., ...})")
    if not isinstance(batch, int | np.integer) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if lookahead_frames is not None and (
        not isinstance(lookahead_frames, int | np.integer) or lookahead_frames < 0
    ):
        raise ValueError(f"lookahead_frames must be an int >= 0 or None, got {lookahead_frames!r}")
    levels = codec.quantizer.check_levels(num_levels)
    return levels * codec.quantizer.num_groups


def init(
    codec, variables, batch: int = 1, *, lookahead_frames: int | None = None, num_levels=None
) -> StreamState:
    """The state of ``batch`` fresh streams (no frame pushed).

    ``lookahead_frames``: None for :func:`exact_lookahead_frames` (exact output); fewer is
    approximate (see the module docstring), more only adds delay. ``num_levels``: code levels
    per frame (None: all; fewer decodes at a lower bitrate).
    """
    num_streams = _check_common(codec, variables, batch, lookahead_frames, num_levels)
    exact = exact_lookahead_frames(codec)
    look = exact if lookahead_frames is None else int(lookahead_frames)
    shapes = _plan(codec, variables, int(batch), num_streams, look)[0]
    buffers = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
    return StreamState(
        frames=jnp.zeros((), jnp.int32),
        ended=jnp.zeros((batch,), bool),
        end=jnp.zeros((batch,), jnp.int32),
        buffers=buffers,
        lookahead_frames=look,
        num_streams=num_streams,
        exact=look >= exact,
    )


def check_chunk(codes, state: StreamState, codebook_size: int | None = None):
    """ValueError unless ``codes`` is ``[B, n, L*G]`` integers for ``state`` (values checked
    against ``[0, codebook_size)`` when given and concrete)."""
    if not hasattr(codes, "dtype"):
        codes = np.asarray(codes)
    shape = tuple(codes.shape)
    batch = state.ended.shape[0]
    if len(shape) != 3:
        raise ValueError(f"codes must be [batch, frames, streams] (rank 3), got shape {shape}")
    if shape[0] != batch or shape[2] != state.num_streams:
        raise ValueError(
            f"codes must have shape [{batch}, n, {state.num_streams}] for this stream "
            f"(batch {batch}, {state.num_streams} code streams), got {shape}"
        )
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codebook_size is not None and not isinstance(codes, jax.core.Tracer) and np.size(codes):
        arr = np.asarray(codes)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= codebook_size:
            raise ValueError(f"codes must be in [0, {codebook_size}), got values in [{lo}, {hi}]")


def step(codec, variables, state: StreamState, codes) -> tuple[jax.Array, StreamState]:
    """Push ``codes [B, n, L*G]`` (``n >= 1``): -> (pcm ``[B, n * hop]`` float32, new state).

    ``pcm`` holds output samples ``[(N - lookahead) * hop, N * hop)`` for ``N`` frames pushed
    including these (zero at negative times and past a stream's end). Pure; jit it with
    ``codec`` static, or close over ``codec`` (one program per chunk size).
    """
    check_streamable(codec)
    check_chunk(codes, state, codec.quantizer.codebook_size)
    if codes.shape[1] < 1:
        raise ValueError("codes must hold at least one frame")
    codes = jnp.asarray(codes, jnp.int32)
    look = state.lookahead_frames
    alloc = None if state.exact else _allocation(codec, look)
    parts = (state.frames, state.ended, state.end, state.buffers)
    pcm, buffers = _run(codec, variables, parts, codes, alloc, look)
    new = state.replace(frames=state.frames + codes.shape[1], buffers=buffers)
    return pcm, new


def end_streams(state: StreamState, which, at=None) -> StreamState:
    """End the streams where ``which [B]`` is true, at ``at`` frames (default: the frames
    pushed so far); streams that already ended keep their end. Their later codes are ignored."""
    which = jnp.asarray(which, bool)
    if which.shape != state.ended.shape:
        raise ValueError(f"which must have shape {state.ended.shape}, got {which.shape}")
    at = state.frames if at is None else jnp.asarray(at, jnp.int32)
    now = which & ~state.ended
    return state.replace(
        ended=state.ended | which, end=jnp.where(now, jnp.broadcast_to(at, now.shape), state.end)
    )


def flush(codec, variables, state: StreamState, chunk_frames: int = 1, step_fn=None):
    """End every stream and drain: -> (the last ``lookahead * hop`` samples ``[B, ...]``, state).

    Runs ``ceil(lookahead / chunk_frames)`` steps of ``chunk_frames`` zero codes (``step_fn``,
    default :func:`step`, e.g. a jitted one, so no new program is compiled).
    """
    step_fn = step_fn or functools.partial(step, codec)
    state = end_streams(state, jnp.ones_like(state.ended))
    need = state.lookahead_frames * codec.hop
    batch = state.ended.shape[0]
    zeros = jnp.zeros((batch, chunk_frames, state.num_streams), jnp.int32)
    outs, have = [], 0
    while have < need:
        pcm, state = step_fn(variables, state, zeros)
        outs.append(pcm)
        have += pcm.shape[1]
    tail = jnp.concatenate(outs, axis=1)[:, :need] if outs else jnp.zeros((batch, 0), jnp.float32)
    return tail, state
