"""Stream decoded audio as raw 16-bit PCM while the codes are decoded (what ``hificodec-jax
decode in.hfc --stream -`` writes to stdout, e.g. for ``aplay -f S16_LE -r 16000``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from hificodec_jax.audio.audio_io import float_to_int16
from hificodec_jax.models.decode_stream import DecodeStream

__all__ = ["stream_decode_to_pcm"]


def _chunks(codes) -> Iterable[np.ndarray]:
    """``codes`` as a sequence of ``[n, L*G]`` pieces: a whole array, or an iterable of pieces."""
    if hasattr(codes, "shape") and hasattr(codes, "dtype"):
        yield np.asarray(codes)
        return
    if isinstance(codes, str | bytes):
        raise ValueError("codes must be an integer array [F, L*G] or an iterable of such arrays")
    yield from (np.asarray(c) for c in codes)


def stream_decode_to_pcm(
    codec,
    variables,
    codes,
    chunk_frames: int,
    write: Callable[[bytes], object],
    *,
    lookahead_frames: int | None = None,
) -> int:
    """Decode one code stream chunk by chunk, writing int16 little-endian mono PCM via ``write``.

    ``codes``: an integer array ``[F, L*G]`` (or ``[1, F, L*G]``), or an iterable of such
    pieces (e.g. frames as a codec language model emits them); the number of levels ``L`` is
    taken from the first piece. Each chunk of ``chunk_frames`` frames is written as soon as it is
    final (exact decoding: the bytes equal whole decoding's, quantised as ``decode`` writes WAV
    files). Returns the number of samples written. Bad codes raise ValueError (nothing is
    written for the piece that failed).
    """
    stream = None
    written = 0

    def emit(pcm: np.ndarray) -> None:
        nonlocal written
        if pcm.shape[1]:
            write(float_to_int16(pcm[0]).astype("<i2").tobytes())
            written += pcm.shape[1]

    for piece in _chunks(codes):
        if piece.ndim == 2:
            piece = piece[None]
        if piece.ndim != 3 or piece.shape[0] != 1:
            raise ValueError(
                f"codes must be [frames, streams] (or [1, frames, streams]), got shape "
                f"{tuple(piece.shape)}"
            )
        if stream is None:
            levels = codec.quantizer.levels_of_streams(piece.shape[-1])
            stream = DecodeStream(
                codec,
                variables,
                chunk_frames=chunk_frames,
                lookahead_frames=lookahead_frames,
                num_levels=levels,
            )
        emit(stream.push(piece))
    if stream is None:
        return 0
    emit(stream.flush())
    return written
