"""Inference on files of any length, in fixed-size windows.

Long files (:func:`chunked_encode`, :func:`chunked_decode`)
    The file is cut into chunks of ``chunk_frames`` frames; each chunk is processed inside a
    window that adds ``overlap_frames`` frames of context on both sides, and only the chunk's
    own frames (encode) / samples (decode) of the window's output are kept. Every window has the
    same shape, so the model compiles once per chunk size whatever the file length (the jitted
    functions are cached per codec), and memory stays flat: one window is in flight on the
    device (plus the next one, dispatched asynchronously), and results are written into one
    preallocated numpy output.

    Windows are placed inside the file where possible: the first starts at sample 0 and the last
    ends at the file's end (their context is then one-sided, which is exactly what whole-file
    processing sees there); a file shorter than one window, and the last window's tail, are
    zero-padded and masked with ``lengths``, which the codec treats exactly like the end of the
    clip. So the file's edges are exact, and only seams between chunks can differ.

    Defaults: chunks of 10 s and at least 1 s of context, widened to the model's receptive
    field (:meth:`Codec.receptive_field`). For the released 16 kHz / hop-320 model that is 500-frame
    chunks with 75 frames (1.5 s, its receptive field) of context for the encoder and 50 frames
    (1 s; receptive field 15 frames) for the decoder: 13 s / 12 s windows, 20-30% extra compute.
    Why seams are inaudible:

    * decoder: it is purely convolutional, so with context >= its receptive field a window's
      kept samples depend on exactly the same codes as in whole-file decoding; the output equals
      it up to float rounding and no crossfade is needed (a centre crop is exact). A context
      below the receptive field gives a warning.
    * encoder: its convolutions are covered the same way, but its GroupNorm layers normalise
      with statistics over the whole input (as in the reference), so by default a window's
      latents are normalised by its own ~13 s of audio instead of the whole file's (closer to
      the 1 s segments the model was trained on than an hour-long file's statistics would be).
      With windows that long the statistics barely move and codes only flip at near-ties; the
      audio decoded from them differs the way any other near-tie code choice does, with no
      discontinuity at the seam. ``global_norm=True`` removes even that: it computes every
      GroupNorm's whole-file statistics in ``N + 1`` passes (``N`` GroupNorm layers; 12 for
      the released models) and then equals whole-file encoding up to float rounding.

Batches of clips: :mod:`hificodec_jax.inference.batching`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hificodec_jax.models.codec import Codec, check_codes, check_wav
from hificodec_jax.models.layers import NORM_INPUTS, NORM_STATS, group_moments

DEFAULT_CHUNK_SECONDS = 10.0
DEFAULT_CONTEXT_SECONDS = 1.0
DEFAULT_SAMPLE_RATE = 16000  # only sets the default chunk/context sizes (the codec has no rate)

# --------------------------------------------------------------------------------------------
# Chunking defaults


def default_chunking(codec: Codec, kind: str, sample_rate: int = DEFAULT_SAMPLE_RATE):
    """``(chunk_frames, overlap_frames)`` used when not given: 10 s chunks, and context of
    max(1 s, receptive field) for ``kind`` ``"encode"`` / ``"decode"``."""
    fps = sample_rate / codec.hop
    enc, dec = codec.receptive_field()
    rf = enc if kind == "encode" else dec
    chunk = max(1, round(DEFAULT_CHUNK_SECONDS * fps))
    context = max(round(DEFAULT_CONTEXT_SECONDS * fps), rf or 0)
    return chunk, context


# --------------------------------------------------------------------------------------------
# Jitted window functions (cached per codec)


@functools.lru_cache(maxsize=64)
def encode_fn(codec: Codec, num_levels: int | None):
    """The jitted, cached ``(variables, wav [B, W], lengths [B]) -> codes`` of a codec."""

    def encode_window(variables, wav, lengths):  # wav [B, W], lengths [B] samples
        return codec.apply(variables, wav, lengths, method="encode", num_levels=num_levels)

    return jax.jit(encode_window)


@functools.lru_cache(maxsize=64)
def decode_fn(codec: Codec):
    """The jitted, cached ``(variables, codes [B, F, C], frame_lengths [B]) -> wav`` of a codec."""

    def decode_window(variables, codes, frame_lengths):  # codes [B, F, C], frame_lengths [B]
        return codec.apply(variables, codes, frame_lengths, method="decode")

    return jax.jit(decode_window)


def _norm_layers(codec: Codec, variables, window: int) -> list[tuple[tuple[str, ...], int]]:
    """``(module path, num_groups)`` of every encoder GroupNorm, in call order (shapes only)."""
    layers = []

    def trace(variables, wav, lengths):
        z, sown = codec.apply(
            variables, wav, lengths, method="encode_latent", mutable=[NORM_INPUTS]
        )
        for path, ((xg, _),) in traverse_util.flatten_dict(sown.get(NORM_INPUTS, {})).items():
            layers.append((path[:-1], xg.shape[2]))  # flax keeps the sow (= call) order
        return z

    wav, lengths = (
        jax.ShapeDtypeStruct((1, window), np.float32),
        jax.ShapeDtypeStruct((1,), np.int32),
    )
    jax.eval_shape(trace, variables, wav, lengths)
    return layers


@functools.lru_cache(maxsize=64)
def _encode_global_fn(codec: Codec, num_levels: int | None):
    """Jitted encode of a window (GroupNorms given whole-file statistics through ``norm_stats``)
    that also returns every GroupNorm's ``group_moments`` over the positions whose first sample
    lies in ``[keep_lo, keep_hi)``, keyed by module path."""

    def encode_window_stats(variables, wav, lengths, keep_lo, keep_hi):
        codes, sown = codec.apply(
            variables, wav, lengths, method="encode", num_levels=num_levels, mutable=[NORM_INPUTS]
        )
        partials = {}
        for path, ((xg, mask),) in traverse_util.flatten_dict(sown[NORM_INPUTS]).items():
            pos = jnp.arange(xg.shape[1]) * (wav.shape[1] // xg.shape[1])  # first sample
            keep = (pos >= keep_lo) & (pos < keep_hi)
            partials["/".join(path[:-1])] = group_moments(xg, keep[None] & mask)
        return codes, partials

    return jax.jit(encode_window_stats)


# --------------------------------------------------------------------------------------------
# Long files


def _windows(
    num_frames: int, total_frames: int, chunk: int, context: int
) -> Iterator[tuple[int, int, int]]:
    """``(window_start, chunk_start, chunk_end)`` covering ``[0, num_frames)`` in chunks.

    Windows are ``chunk + 2 * context`` frames, placed as ``chunk_start - context`` but clamped
    into ``[0, total_frames - window]`` (``total_frames`` >= ``num_frames`` counts a trailing
    partial frame), so edge windows read real audio instead of padding where the file allows.
    Consecutive chunks that land in the same (clamped) window are merged into one.
    """
    window = chunk + 2 * context
    last_start = max(total_frames - window, 0)
    current = None
    for c in range(0, num_frames, chunk):
        s, e = min(max(c - context, 0), last_start), min(c + chunk, num_frames)
        if current is not None and current[0] == s:  # same window (clamped): one run
            current = (s, current[1], e)
            continue
        if current is not None:
            yield current
        current = (s, c, e)
    if current is not None:
        yield current


def _check_chunking(chunk_frames, overlap_frames):
    if int(chunk_frames) < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if int(overlap_frames) < 0:
        raise ValueError(f"overlap_frames must be >= 0, got {overlap_frames}")
    return int(chunk_frames), int(overlap_frames)


def check_wav_1d(wav, hop: int, what: str = "wav") -> np.ndarray:
    """``wav`` as a 1-D finite float numpy array of at least one hop, else a ``ValueError``
    (:func:`~hificodec_jax.models.codec.check_wav`'s checks, mono only)."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"{what} must be 1-D [T] (mono), got shape {wav.shape}")
    check_wav(wav, hop, what)
    return wav


def _combine(acc, partial):
    """Chan et al.'s parallel update of (count, mean, M2), in float64 on the host."""
    n_b, mean_b, m2_b = (np.asarray(a, np.float64) for a in partial)
    if n_b == 0:
        return acc
    if acc is None:
        return n_b, mean_b, m2_b
    n_a, mean_a, m2_a = acc
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


def chunked_encode(
    codec: Codec,
    variables,
    wav: np.ndarray,
    *,
    chunk_frames: int | None = None,
    overlap_frames: int | None = None,
    num_levels: int | None = None,
    progress: bool = False,
    global_norm: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> np.ndarray:
    """``wav [T]`` -> ``codes [T // hop, L*G]`` int32, one fixed-size window at a time.

    ``chunk_frames`` / ``overlap_frames`` default to 10 s and max(1 s, the encoder's receptive
    field) at ``sample_rate``; each window holds ``chunk_frames + 2 * overlap_frames`` frames.
    ``progress`` shows a tqdm bar.

    The encoder's GroupNorms normalise over their whole input. By default each window uses its
    own statistics (one pass; codes match whole-file encoding except at near-ties, the more the
    longer the windows). ``global_norm=True`` reproduces whole-file encoding: ``N + 1`` passes
    over the file for ``N`` GroupNorm layers, pass ``k`` accumulating the whole-file statistics
    of layer ``k`` (with layers ``< k`` already using theirs), the last one emitting codes; the
    result then equals ``codec.apply(variables, wav, method="encode")`` up to float rounding.
    """
    hop = codec.hop
    wav = check_wav_1d(wav, hop)
    default_chunk, default_ctx = default_chunking(codec, "encode", sample_rate)
    chunk, ctx = _check_chunking(
        default_chunk if chunk_frames is None else chunk_frames,
        default_ctx if overlap_frames is None else overlap_frames,
    )
    levels = codec.quantizer.check_levels(num_levels)
    t = wav.shape[0]
    num_frames, total_frames = t // hop, -(-t // hop)
    window = (chunk + 2 * ctx) * hop
    windows = list(_windows(num_frames, total_frames, chunk, ctx))
    variables = jax.device_put(variables)
    out = np.empty((num_frames, levels * codec.quantizer.num_groups), np.int32)

    def inputs(s):
        x = np.zeros((1, window), np.float32)
        piece = wav[s * hop : s * hop + window]
        x[0, : piece.shape[0]] = piece
        return x, np.array([piece.shape[0]], np.int32)

    def keep_codes(codes, s, c, e):
        out[c:e] = np.asarray(codes)[0, c - s : e - s]

    if not global_norm:
        fn = encode_fn(codec, num_levels)
        with _Progress(len(windows), progress, "encode") as bar:
            _pipelined(windows, lambda s, c, e: fn(variables, *inputs(s)), keep_codes, bar)
        return out

    layers = _norm_layers(codec, variables, window)
    stats = [(np.zeros(g, np.float32), np.ones(g, np.float32)) for _, g in layers]
    fn = _encode_global_fn(codec, num_levels)
    with _Progress(len(windows) * (len(layers) + 1), progress, "encode") as bar:
        for target in range(len(layers) + 1):  # pass k: layers < k use whole-file statistics
            acc = None
            given = traverse_util.unflatten_dict(
                {
                    (*path, name): value
                    for k, (path, _) in enumerate(layers)
                    for name, value in zip(
                        ("mean", "var", "use"), (*stats[k], np.bool_(k < target)), strict=True
                    )
                }
            )
            v = {**variables, NORM_STATS: given}

            def run(s, c, e, v=v):
                lo, hi = (c - s) * hop, window if e == num_frames else (e - s) * hop
                return fn(v, *inputs(s), np.int32(lo), np.int32(hi))

            def collect(result, s, c, e, target=target):
                nonlocal acc
                codes, partials = result
                if target < len(layers):
                    acc = _combine(acc, partials["/".join(layers[target][0])])
                else:
                    keep_codes(codes, s, c, e)

            _pipelined(windows, run, collect, bar)
            if target < len(layers):
                n, mean, m2 = acc
                stats[target] = (mean.astype(np.float32), (m2 / n).astype(np.float32))
    return out


class _Progress:
    """A tqdm bar (or nothing) usable as a context manager with ``update(n)``."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="window", desc=desc)

    def update(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _pipelined(windows, run, collect, bar: _Progress):
    """``collect(run(w), *w)`` for each window, dispatching window i+1 before collecting i (JAX
    runs asynchronously), so at most two windows are in flight."""
    pending = None
    for w in windows:
        result = run(*w)
        if pending is not None:
            collect(*pending)
            bar.update()
        pending = (result, *w)
    if pending is not None:
        collect(*pending)
        bar.update()


def chunked_decode(
    codec: Codec,
    variables,
    codes: np.ndarray,
    *,
    chunk_frames: int | None = None,
    overlap_frames: int | None = None,
    progress: bool = False,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
) -> np.ndarray:
    """``codes [F, L*G]`` -> ``wav [F * hop]`` float32, one fixed-size window at a time.

    Each window decodes ``chunk_frames + 2 * overlap_frames`` frames and its chunk's samples are
    kept (centre crop). With ``overlap_frames`` >= the decoder's receptive field (the default)
    this equals ``codec.apply(variables, codes, method="decode")`` up to float rounding.
    """
    codes, _ = check_codes(np.asarray(codes), codec.quantizer)
    codes = np.asarray(codes)
    if codes.shape[0] != 1:
        raise ValueError(f"codes must be [F, L*G] (one file), got shape {codes.shape}")
    codes = codes[0]
    if codes.shape[0] == 0:
        raise ValueError("codes have no frames")
    default_chunk, default_ctx = default_chunking(codec, "decode", sample_rate)
    chunk, ctx = _check_chunking(
        default_chunk if chunk_frames is None else chunk_frames,
        default_ctx if overlap_frames is None else overlap_frames,
    )
    _, rf = codec.receptive_field()
    num_frames, hop = codes.shape[0], codec.hop
    if rf is not None and ctx < rf and num_frames > chunk:
        warnings.warn(
            f"overlap_frames={ctx} is below the decoder's receptive field ({rf} frames): "
            "samples near chunk seams will differ from whole-file decoding",
            stacklevel=2,
        )
    window = chunk + 2 * ctx
    fn = decode_fn(codec)
    variables = jax.device_put(variables)
    out = np.empty(num_frames * hop, np.float32)

    def run(s, c, e):
        x = np.zeros((1, window, codes.shape[1]), np.int32)
        piece = codes[s : s + window]
        x[0, : piece.shape[0]] = piece
        return fn(variables, x, np.array([piece.shape[0]], np.int32))

    def collect(wav, s, c, e):
        out[c * hop : e * hop] = np.asarray(wav)[0, (c - s) * hop : (e - s) * hop]

    windows = list(_windows(num_frames, num_frames, chunk, ctx))
    with _Progress(len(windows), progress, "decode") as bar:
        _pipelined(windows, run, collect, bar)
    return out
