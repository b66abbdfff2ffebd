"""Encoding a work unit's records exactly: the model, length-sorted masked batches, the long-file
path, and audio read on a thread pool ahead of the device (:mod:`hificodec_jax.tokens.job`)."""

from __future__ import annotations

import collections
import json
import math
import os
from typing import Any

import numpy as np

from hificodec_jax.inference.batching import bucket
from hificodec_jax.inference.long_files import chunked_encode, encode_fn
from hificodec_jax.loading import Model, load
from hificodec_jax.model_dir import model_id
from hificodec_jax.tokens import inputs
from hificodec_jax.tokens.inputs import BadAudio, Record


def resolve_model(model) -> tuple[Any, dict, dict]:
    """``(codec, variables, identity)`` of a model name or directory, or of
    ``(codec, variables, identity)`` given directly (``identity``: ``sample_rate`` required;
    ``name``, ``model_id`` (hex; default: hashed from the variables), ``config`` optional)."""
    if isinstance(model, str | os.PathLike):
        model = (load(model), os.fspath(model))
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], Model):
        loaded, name = model
        identity = {
            "name": name,
            "model_id": loaded.model_id.hex(),
            "config": json.loads(loaded.config.to_json_best_effort()),
            "sample_rate": loaded.sample_rate,
        }
        return loaded.codec, loaded.variables, identity
    if isinstance(model, Model):
        return resolve_model((model, str(model.directory)))
    try:
        codec, variables, identity = model
    except (TypeError, ValueError):
        raise ValueError(
            "model must be a model name or directory, or (codec, variables, identity)"
        ) from None
    identity = dict(identity)
    if "sample_rate" not in identity:
        raise ValueError("the model's identity must give its sample_rate")
    if "model_id" not in identity:
        identity["model_id"] = model_id(variables).hex()
    identity.setdefault("name", "")
    identity.setdefault("config", None)
    return codec, variables, identity


# --------------------------------------------------------------------------------------------
# Plan


class Encoder:
    """The codec's encode on this process's local devices: each batch runs whole on one device,
    in turn (JAX dispatches asynchronously, so the devices work in parallel). A batch's program
    does not depend on how many devices there are, so neither do its codes."""

    def __init__(self, codec, variables, levels: int | None, sample_rate: int):
        import jax

        self.codec, self.levels, self.sample_rate = codec, levels, sample_rate
        self.fn = encode_fn(codec, levels)
        self.devices = jax.local_devices()
        self.variables = [jax.device_put(variables, d) for d in self.devices]
        self.turn = 0

    def _next(self) -> int:
        self.turn = (self.turn + 1) % len(self.devices)
        return self.turn

    def batch(self, wavs: list[np.ndarray], max_batch: int):
        """Dispatches a masked batch (rows padded to a power of two, samples to a length
        bucket); returns a handle for :meth:`collect`."""
        import jax

        t = bucket(max(w.shape[0] for w in wavs), 4 * self.codec.hop)
        rows = 1 << (len(wavs) - 1).bit_length()  # a power of two already (see _batches)
        x = np.zeros((rows, t), np.float32)
        lengths = np.full((rows,), t, np.int32)
        for i, w in enumerate(wavs):
            x[i, : w.shape[0]] = w
            lengths[i] = w.shape[0]
        d = self._next()
        x, lengths = jax.device_put((x, lengths), self.devices[d])
        return self.fn(self.variables[d], x, lengths), [w.shape[0] for w in wavs]

    def collect(self, handle) -> list[np.ndarray]:
        codes, sizes = handle
        codes = np.asarray(codes)
        return [codes[i, : n // self.codec.hop] for i, n in enumerate(sizes)]

    def long(self, wav: np.ndarray) -> np.ndarray:
        return chunked_encode(
            self.codec, self.variables[self._next()], wav, num_levels=self.levels,
            global_norm=True, sample_rate=self.sample_rate,
        )  # fmt: skip


def _batches(records, *, max_batch, batch_seconds, window_seconds, whole_seconds):
    """The unit's records grouped for the device: ``("batch", [records])`` of similar lengths,
    ``("whole", [record])`` and ``("long", [record])``, from the planned durations.

    A batch's clips share a length class (durations within ~25 %), and batches hold a power
    of two of clips (a group of 12 becomes batches of 8 and 4), so no
    device call computes padding rows, and the shapes stay few (rows 1, 2, 4, ...)."""

    short = sorted(
        (r for r in records if (r.duration or 0.0) <= window_seconds),
        key=lambda r: (r.duration or 0.0, r.key),
    )
    groups: list[list[Record]] = []
    group: list[Record] = []

    def length_class(r):  # padding within a batch stays below ~25 %, as in bucket()
        return bucket(max(1, math.ceil((r.duration or 0.0) * 100)), 1)

    for r in short:
        if group and (
            len(group) == max_batch
            or (len(group) + 1) * (r.duration or 0.0) > batch_seconds
            or length_class(r) != length_class(group[0])
        ):
            groups.append(group)
            group = []
        group.append(r)
    if group:
        groups.append(group)
    out = []
    for group in groups:
        while group:
            n = 1 << (len(group).bit_length() - 1)  # the largest power of two that fits
            out.append(("batch", group[-n:]))  # the longest clips first
            group = group[:-n]
    for r in records:
        if (r.duration or 0.0) > window_seconds:
            out.append(("whole" if r.duration <= whole_seconds else "long", [r]))
    return out


def encode_unit(
    encoder, records, sample_rate, pool, bar, settings, reject_silent
) -> tuple[dict, list]:
    """``({key: (codes, meta)}, errors)`` of one unit's records."""
    hop = encoder.codec.hop
    groups = _batches(records, **settings)
    futures = collections.deque()

    def submit(kind, group):
        load = lambda r: inputs.load_audio(r, sample_rate, hop, reject_silent=reject_silent)  # noqa: E731
        return kind, group, [pool.submit(load, r) for r in group]

    results: dict[str, tuple] = {}
    errors: list[dict] = []
    ahead = 4  # groups whose audio is being read while the device works
    queue = collections.deque(groups)
    while queue and len(futures) < ahead:
        futures.append(submit(*queue.popleft()))
    pending = collections.deque()  # dispatched batches not yet collected, one per device

    def finish(p):
        handle, ok = p
        for (r, (wav, rate, n)), codes in zip(ok, encoder.collect(handle), strict=True):
            results[r.key] = (codes, _meta(r, wav, rate, n, sample_rate))
        bar.update(sum(wav.shape[0] for _, (wav, _, _) in ok) / sample_rate / 3600)

    while futures:
        kind, group, loads = futures.popleft()
        if queue:
            futures.append(submit(*queue.popleft()))
        ok = []
        for r, f in zip(group, loads, strict=True):
            try:
                ok.append((r, f.result()))
            except BadAudio as e:
                errors.append({"key": r.key, "path": r.path, "reason": str(e)})
                bar.update(0.0, 1)
        if not ok:
            continue
        if kind == "long":
            r, (wav, rate, n) = ok[0]
            meta = {**_meta(r, wav, rate, n, sample_rate), "long_path": True}
            results[r.key] = (encoder.long(wav), meta)
            bar.update(wav.shape[0] / sample_rate / 3600)
            continue
        if len(pending) == len(encoder.devices):
            finish(pending.popleft())
        pending.append((encoder.batch([w for _, (w, _, _) in ok], settings["max_batch"]), ok))
    while pending:
        finish(pending.popleft())
    return results, errors


def _meta(r: Record, wav, rate, n, sample_rate) -> dict:
    meta = {
        "key": r.key, "source": r.path, "sample_rate": rate, "duration": n / rate,
        "num_samples": int(wav.shape[0]),
    }  # fmt: skip
    for name in ("start", "end", "text", "speaker", "language", "index"):
        if getattr(r, name) is not None:
            meta[name] = getattr(r, name)
    if r.extra:
        meta["extra"] = r.extra
    return meta


# --------------------------------------------------------------------------------------------
# Units on disk
