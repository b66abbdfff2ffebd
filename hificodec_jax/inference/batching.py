"""Batches of clips of any lengths through the codec (:func:`encode_batch`, :func:`decode_batch`).

Clips are sorted by length, grouped (``max_batch``), padded to a length bucket and passed
with ``lengths``: the codec masks padding exactly, so each clip's codes / audio equal those
of the clip processed alone. Buckets are multiples of 4 hops (4 frames for codes) rounded up
to 3 significant bits (4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ... units: at most 4 shapes per
octave, less than 25% padding), and the batch is padded to a power of two, so a stream of
varied clips compiles few shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import numpy as np

from hificodec_jax.inference.long_files import check_wav_1d, decode_fn, encode_fn
from hificodec_jax.models.codec import Codec, check_codes

__all__ = ["bucket", "decode_batch", "encode_batch"]


def bucket(n: int, unit: int) -> int:
    """``n`` rounded up to a multiple of ``unit`` whose unit count has <= 3 significant bits."""
    units = max(1, -(-n // unit))
    shift = max(units.bit_length() - 3, 0)
    return (-(-units >> shift) << shift) * unit


def _groups(sizes: Sequence[int], max_batch: int) -> Iterator[list[int]]:
    """Indices sorted by size, in groups of at most ``max_batch`` (similar lengths together)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for i in range(0, len(order), max_batch):
        yield order[i : i + max_batch]


def _batch_rows(n: int, max_batch: int) -> int:
    return min(1 << (n - 1).bit_length(), max_batch)


def encode_batch(
    codec: Codec,
    variables,
    wavs: Sequence[np.ndarray],
    *,
    num_levels: int | None = None,
    max_batch: int = 16,
) -> list[np.ndarray]:
    """1-D clips of any lengths -> their codes ``[T_i // hop, L*G]`` (int32), in input order.

    Each clip's codes equal ``codec.apply(variables, wav_i, method="encode")`` (padding is
    masked with ``lengths``). Clips are padded to length buckets and batches of a power of two,
    at most ``max_batch`` clips per call.
    """
    hop = codec.hop
    wavs = [check_wav_1d(w, hop, f"wavs[{i}]") for i, w in enumerate(wavs)]
    codec.quantizer.check_levels(num_levels)
    fn = encode_fn(codec, num_levels)
    variables = jax.device_put(variables)
    out: list[np.ndarray | None] = [None] * len(wavs)
    for group in _groups([w.shape[0] for w in wavs], max_batch):
        t = bucket(max(wavs[i].shape[0] for i in group), 4 * hop)
        rows = _batch_rows(len(group), max_batch)
        x = np.zeros((rows, t), np.float32)
        lengths = np.full((rows,), t, np.int32)
        for row, i in enumerate(group):
            x[row, : wavs[i].shape[0]] = wavs[i]
            lengths[row] = wavs[i].shape[0]
        codes = np.asarray(fn(variables, x, lengths))
        for row, i in enumerate(group):
            out[i] = codes[row, : wavs[i].shape[0] // hop].copy()
    return out


def decode_batch(
    codec: Codec, variables, codes: Sequence[np.ndarray], *, max_batch: int = 16
) -> list[np.ndarray]:
    """Codes ``[F_i, L*G]`` of several clips (same ``L``) -> ``wav [F_i * hop]`` each, in order.

    Each equals ``codec.apply(variables, codes_i, method="decode")`` up to float rounding
    (padded frames are masked). Bucketing as in :func:`encode_batch`, in units of 4 frames.
    """
    hop = codec.hop
    checked = []
    for i, c in enumerate(codes):
        c = np.asarray(c)
        if c.ndim != 2:
            raise ValueError(f"codes[{i}] must be [F, L*G], got shape {c.shape}")
        if c.shape[0] == 0:
            raise ValueError(f"codes[{i}] has no frames")
        checked.append(np.asarray(check_codes(c, codec.quantizer)[0]))
    widths = {c.shape[-1] for c in checked}
    if len(widths) > 1:
        raise ValueError(f"all codes must use the same number of streams, got {sorted(widths)}")
    fn = decode_fn(codec)
    variables = jax.device_put(variables)
    out: list[np.ndarray | None] = [None] * len(checked)
    for group in _groups([c.shape[1] for c in checked], max_batch):
        f = bucket(max(checked[i].shape[1] for i in group), 4)
        rows = _batch_rows(len(group), max_batch)
        x = np.zeros((rows, f, checked[group[0]].shape[-1]), np.int32)
        frames = np.full((rows,), f, np.int32)
        for row, i in enumerate(group):
            x[row, : checked[i].shape[1]] = checked[i][0]
            frames[row] = checked[i].shape[1]
        wav = np.asarray(fn(variables, x, frames))
        for row, i in enumerate(group):
            out[i] = wav[row, : checked[i].shape[1] * hop].copy()
    return out
