"""Audio files and ``.hfc`` files through a codec, many at a time (the CLI's encode / decode).

Files up to one encode window (10 s) go through :func:`~hificodec_jax.inference.batching.encode_batch`
and ``decode_batch``, many clips per call; longer ones through ``chunked_encode`` /
``chunked_decode``, window by window, so memory stays flat however long the file is. Headers
record the input's own sample rate and length, which :func:`restore` brings back. Every error
about a file is a ``ValueError`` that names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import soundfile as sf

from hificodec_jax.audio.audio_io import float_to_int16, read_audio, resample
from hificodec_jax.inference.batching import decode_batch, encode_batch
from hificodec_jax.inference.bitstream import HfcHeader, read_hfc
from hificodec_jax.inference.long_files import chunked_decode, chunked_encode, default_chunking
from hificodec_jax.loading import Model
from hificodec_jax.models.codec import non_finite_message

__all__ = [
    "BATCH_FILES", "decode_codes", "encode_files", "read_audio_file",
    "read_codes", "restore", "write_audio",
]  # fmt: skip

BATCH_FILES = 64  # short files gathered before one encode_batch / decode_batch call
Note = Callable[[str], None] | None


def read_audio_file(path: str, sample_rate: int, hop: int, note: Note = None):
    """``(wav [T] float32 at sample_rate, the file's own rate, its length there)``.

    The encode path's one finiteness check (before resampling, which would smear a NaN), so the
    error names the file. ``note`` receives a line when channels are mixed or the rate changes.
    """
    try:
        wav, rate = read_audio(path)
    except Exception as e:  # any decoder failure is a bad input file
        raise ValueError(f"cannot read audio file {path!r}: {e}") from None
    if note is not None:
        with contextlib.suppress(Exception):  # files that librosa decoded have no sf.info
            if (channels := sf.info(path).channels) != 1:
                note(f"{path}: {channels} channels mixed down to mono")
        if rate != sample_rate:
            note(f"{path}: resampled from {rate} Hz to {sample_rate} Hz")
    if message := non_finite_message(wav, repr(path)):
        raise ValueError(message)
    resampled = resample(wav, rate, sample_rate)
    if len(resampled) < hop:
        raise ValueError(f"{path!r} is shorter than one frame ({hop} samples at {sample_rate} Hz)")
    return resampled, rate, len(wav)


def _header(model: Model, codes: np.ndarray, length: int, original_rate: int) -> HfcHeader:
    q = model.codec.quantizer
    return HfcHeader(
        sample_rate=model.sample_rate, hop=model.codec.hop, num_groups=q.num_groups,
        num_levels=q.num_levels, levels_used=codes.shape[1] // q.num_groups,
        codebook_size=q.codebook_size, model_id=model.model_id, num_frames=codes.shape[0],
        original_length=length, original_sample_rate=original_rate,
    )  # fmt: skip


def encode_files(
    model: Model,
    items: Iterable[tuple[Any, str]],
    *,
    num_levels: int | None = None,
    exact: bool = False,
    progress: bool = False,
    note: Note = None,
    on_error: Callable[[Any, ValueError], None] | None = None,
) -> Iterator[tuple[Any, np.ndarray, HfcHeader]]:
    """``(key, codes [F, L*G], header)`` for each ``(key, audio path)``, short files batched
    (so not in input order). ``exact``: whole-file GroupNorm statistics for files longer than
    one window (a short file's window holds all of it, so its codes are whole-file codes).
    A file that cannot be read raises its ``ValueError``, or with ``on_error`` is passed to it
    (``on_error(key, error)``) and skipped."""
    codec, rate = model.codec, model.sample_rate
    short = default_chunking(codec, "encode", rate)[0] * codec.hop
    pending: list[tuple] = []

    def flush():
        batch = pending[:]
        pending.clear()
        codes = encode_batch(codec, model.variables, [b[2] for b in batch], num_levels=num_levels)
        for (key, _, _, original_rate, n), c in zip(batch, codes, strict=True):
            yield key, c, _header(model, c, n, original_rate)

    for key, path in items:
        try:
            wav, original_rate, length = read_audio_file(path, rate, codec.hop, note)
        except ValueError as e:
            if on_error is None:
                raise
            on_error(key, e)
            continue
        if len(wav) <= short:
            pending.append((key, path, wav, original_rate, length))
            if len(pending) == BATCH_FILES:
                yield from flush()
            continue
        codes = chunked_encode(
            codec, model.variables, wav, num_levels=num_levels, progress=progress,
            sample_rate=rate, global_norm=exact,
        )  # fmt: skip
        yield key, codes, _header(model, codes, length, original_rate)
    if pending:
        yield from flush()


def read_codes(model: Model, path: str) -> tuple[np.ndarray, HfcHeader]:
    """A ``.hfc`` file's codes and header, checked against ``model``; errors name the file."""
    codes, header = read_hfc(path, expect_model_id=model.model_id)
    if header.sample_rate != model.sample_rate or header.hop != model.codec.hop:
        raise ValueError(f"{path} was encoded at another rate/hop than this model")
    if header.num_frames == 0:
        raise ValueError(f"{path} holds no frames")
    return codes, header


def decode_codes(
    model: Model, items: Iterable[tuple[Any, np.ndarray, HfcHeader]], *, progress: bool = False
) -> Iterator[tuple[Any, np.ndarray, HfcHeader]]:
    """``(key, wav [F * hop] at the model's rate, header)`` for each ``(key, codes, header)``;
    short streams batched (grouped by stream count), so not in input order."""
    codec, rate = model.codec, model.sample_rate
    short = default_chunking(codec, "decode", rate)[0]
    pending: list[tuple] = []

    def flush():
        batch = pending[:]
        pending.clear()
        for width in sorted({b[1].shape[1] for b in batch}):
            group = [b for b in batch if b[1].shape[1] == width]
            wavs = decode_batch(codec, model.variables, [b[1] for b in group])
            for (key, _, header), wav in zip(group, wavs, strict=True):
                yield key, wav, header

    for key, codes, header in items:
        if codes.shape[0] <= short:
            pending.append((key, codes, header))
            if len(pending) == BATCH_FILES:
                yield from flush()
            continue
        wav = chunked_decode(codec, model.variables, codes, progress=progress, sample_rate=rate)
        yield key, wav, header
    if pending:
        yield from flush()


def _fit(wav: np.ndarray, n: int) -> np.ndarray:
    return wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))


def restore(wav: np.ndarray, header: HfcHeader, model_rate: bool = False) -> tuple[np.ndarray, int]:
    """``(wav, rate)``: decoded audio at the input's length and sample rate (at the model's rate,
    the input's length there, when ``model_rate``). The encoder drops the last partial frame;
    it comes back as silence."""
    rate, original = header.sample_rate, header.original_sample_rate
    wav = _fit(wav, -(-header.original_length * rate // original))
    if model_rate or rate == original:
        return wav, rate
    return _fit(resample(wav, rate, original), header.original_length), original


def write_audio(
    path: str, wav: np.ndarray, rate: int, *, as_float: bool = False, note: Note = None
):
    """Writes ``wav`` as 16-bit PCM (clipped, with a note) or 32-bit float; errors name ``path``."""
    if as_float:
        data, subtype = np.asarray(wav, np.float32), "FLOAT"
    else:
        data, subtype = float_to_int16(wav), "PCM_16"
        if note is not None and (clipped := int(np.sum(np.abs(wav) >= 1.0))):
            note(f"{path}: {clipped} samples clipped to the 16-bit range (--float keeps them)")
    try:
        sf.write(path, data, rate, subtype=subtype)
    except (sf.LibsndfileError, OSError) as e:
        raise ValueError(f"cannot write {path}: {e}") from None
