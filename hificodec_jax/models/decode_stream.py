"""A host-side streaming decoder over :mod:`hificodec_jax.models.streaming`: any push size,
input checks that leave the stream unchanged, per-stream ends, one compiled program per chunk
size."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hificodec_jax.models.streaming import (
    check_chunk,
    check_streamable,
    end_streams,
    init,
    prepare,
    step,
)

__all__ = ["DecodeStream"]


@functools.lru_cache(maxsize=32)
def _jitted_step(codec):
    """``step`` with ``codec`` bound, jitted once per codec (then once per chunk shape)."""
    return jax.jit(functools.partial(step, codec), donate_argnums=(1,))


class DecodeStream:
    """Streaming decoder of ``batch`` code streams over a loaded codec (host-side wrapper).

    ``push(codes [B, n, L*G])`` with any ``n`` returns the audio that is now final, ``[B, T]``
    float32 (numpy); ``end(streams)`` ends some streams (their samples past their end are zero,
    as ``decode`` with ``frame_lengths`` gives); ``flush()`` ends the rest and returns the tail.
    The concatenated output equals ``codec.apply(variables, codes, frame_lengths,
    method="decode")``. Frames are decoded in chunks of ``chunk_frames`` (one compiled program
    per chunk size, shared by streams over the same codec); a push that does not fill a chunk
    waits for the next one. Bad input raises ValueError and leaves the stream as it was.
    """

    def __init__(
        self,
        codec,
        variables,
        *,
        batch: int = 1,
        chunk_frames: int = 1,
        lookahead_frames: int | None = None,
        num_levels: int | None = None,
    ):
        check_streamable(codec)
        if not isinstance(chunk_frames, int | np.integer) or chunk_frames < 1:
            raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
        self.codec, self.variables = codec, prepare(codec, variables)
        self.chunk_frames = int(chunk_frames)
        self._state = init(
            codec, variables, batch, lookahead_frames=lookahead_frames, num_levels=num_levels
        )
        self._step = _jitted_step(codec)
        self.batch = int(batch)
        self._pending = np.zeros((self.batch, 0, self._state.num_streams), np.int32)
        self._pushed = 0  # frames pushed by the caller, pending ones included
        self._ended = np.zeros(self.batch, bool)
        self._ends = np.zeros(self.batch, np.int64)
        self._skip = self.lookahead_frames * codec.hop  # leading samples at negative times
        self._emitted = 0  # samples returned so far
        self._flushed = False

    @property
    def lookahead_frames(self) -> int:
        return self._state.lookahead_frames

    @property
    def exact(self) -> bool:
        """Whether the output equals whole decoding (full lookahead)."""
        return self._state.exact

    @property
    def frames_pushed(self) -> int:
        return self._pushed

    def latency(self, sample_rate: float) -> float:
        """Algorithmic latency in seconds: (lookahead + one chunk) frames."""
        return (self.lookahead_frames + self.chunk_frames) * self.codec.hop / sample_rate

    def _check_open(self):
        if self._flushed:
            raise ValueError("this stream was flushed; create a new DecodeStream to decode more")

    def push(self, codes) -> np.ndarray:
        """Push ``codes [B, n, L*G]`` (``n >= 0``); -> the samples now final, ``[B, T]``."""
        self._check_open()
        check_chunk(codes, self._state, None)
        codes = np.asarray(codes)
        active = codes[~self._ended]
        if active.size:
            k = self.codec.quantizer.codebook_size
            lo, hi = int(active.min()), int(active.max())
            if lo < 0 or hi >= k:
                raise ValueError(f"codes must be in [0, {k}), got values in [{lo}, {hi}]")
        codes = np.where(self._ended[:, None, None], 0, codes).astype(np.int32)
        self._pending = np.concatenate([self._pending, codes], axis=1)
        self._pushed += codes.shape[1]
        return self._drain(full_only=True)

    def end(self, streams) -> None:
        """End the given streams (indices, or a ``[B]`` bool mask) after the frames pushed so
        far; codes pushed for them later are ignored (any values). Their tails come out of the
        following pushes, or of :meth:`flush`."""
        self._check_open()
        which = np.zeros(self.batch, bool)
        streams = np.asarray(streams)
        if streams.dtype == bool:
            if streams.shape != (self.batch,):
                raise ValueError(f"a stream mask must have shape ({self.batch},)")
            which = streams
        else:
            if streams.size and (streams.min() < 0 or streams.max() >= self.batch):
                raise ValueError(f"stream indices must be in [0, {self.batch}), got {streams}")
            which[streams.astype(int)] = True
        new = which & ~self._ended
        self._ends[new] = self._pushed
        self._ended |= which
        self._state = end_streams(self._state, jnp.asarray(which), jnp.asarray(self._ends))

    def flush(self) -> np.ndarray:
        """End every stream and return the rest of the audio, ``[B, T]``; the stream is closed."""
        self._check_open()
        self.end(np.ones(self.batch, bool))
        total = int(self._ends.max()) * self.codec.hop  # samples of the whole decode
        out = [self._drain(full_only=False)]
        zeros = np.zeros((self.batch, self.chunk_frames, self._state.num_streams), np.int32)
        while self._emitted < total:
            out.append(self._run(zeros))
        self._flushed = True
        pcm = np.concatenate(out, axis=1)
        return pcm[:, : pcm.shape[1] - (self._emitted - total)]

    def _drain(self, full_only: bool) -> np.ndarray:
        n = self.chunk_frames
        outs = []
        while self._pending.shape[1] >= n or (not full_only and self._pending.shape[1]):
            chunk = self._pending[:, :n]
            if chunk.shape[1] < n:  # the last partial chunk: zero frames past every end
                pad = np.zeros((self.batch, n - chunk.shape[1], chunk.shape[2]), np.int32)
                chunk = np.concatenate([chunk, pad], axis=1)
            self._pending = self._pending[:, n:]
            outs.append(self._run(chunk))
        if not outs:
            return np.zeros((self.batch, 0), np.float32)
        return np.concatenate(outs, axis=1)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        pcm, self._state = self._step(self.variables, self._state, jnp.asarray(chunk))
        pcm = np.asarray(pcm)
        drop = min(self._skip, pcm.shape[1])
        self._skip -= drop
        pcm = pcm[:, drop:]
        self._emitted += pcm.shape[1]
        return pcm
