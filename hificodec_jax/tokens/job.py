"""The tokenize job: a corpus -> codes in an ArrayRecord store, exact, resumable, sharded.

* **Plan.** The records (sorted by key) are cut into work units of about ``unit_hours`` of
  audio, in key order; the plan is written once (``plan.json``) and reused by every restart and
  every process, so units never change under a running job.
* **Units.** Process ``p`` of ``P`` takes units ``i % P == p`` (no collective anywhere: a slow
  or failing process never blocks the others). A unit's shard is written under a temporary
  name, renamed, and committed by writing its sidecar last. A restart skips committed units
  and removes its own units' temporaries and uncommitted shards.
* **Exact codes.** Within a unit, clips up to ``window_seconds`` are sorted by length and
  encoded in masked batches (``lengths``) of at most ``max_batch`` rows and ``batch_seconds``
  of padded audio; longer files are encoded alone in one call up to ``whole_seconds`` and
  beyond that by the long-file path with whole-file GroupNorm statistics
  (``chunked_encode(global_norm=True)``). A record's codes are those of
  ``codec.apply(variables, wav, method="encode")`` on it alone, up to float rounding: the
  padded program may round differently, which flips a code only at a near-tie (tests: at
  most 1e-4 of frames, with random codebooks). Each batch runs whole on one local device, in
  turn, so a record's codes (and a unit's bytes) depend on its records, the model and the
  batching settings, which the plan fixes, not on the device or process count, the worker
  count or interruptions.
* **Audio** is decoded, mixed down and resampled on a thread pool ahead of the device.
* **Bad records** are listed in the unit's sidecar with the reason; ``max_error_rate`` stops
  the job (after committing the unit) once this process's errors exceed that share of its
  records.
* **Finalize.** The process that finds every unit committed writes ``index.jsonl``,
  ``lengths.npy``, ``errors.jsonl`` and, last, ``dataset.json``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sys
import time

import numpy as np

from hificodec_jax.tokens import encoding, inputs, store
from hificodec_jax.tokens.inputs import Record

PLAN_VERSION = 1
CRASH_ENV = "HIFICODEC_TOKENIZE_CRASH"  # tests: SIGKILL this process at a named point


class TokenizeError(RuntimeError):
    """The job stopped: too many bad records, or an output directory from another job."""


def _crash_point(name: str, unit: int | None = None) -> None:
    """SIGKILL at ``name`` (``name:unit``) when the tests ask for it through ``CRASH_ENV``."""
    want = os.environ.get(CRASH_ENV)
    if want and want == (name if unit is None else f"{name}:{unit}"):
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Model


def cut_units(records: list[Record], unit_hours: float) -> list[list[Record]]:
    """Consecutive runs of ``records`` (in their key order) of about ``unit_hours`` each."""
    budget = unit_hours * 3600.0
    units: list[list[Record]] = [[]]
    total = 0.0
    for r in records:
        if units[-1] and total + (r.duration or 0.0) > budget:
            units.append([])
            total = 0.0
        units[-1].append(r)
        total += r.duration or 0.0
    return units


def _load_or_make_plan(out, source, split, unit_hours, identity, settings, workers) -> dict:
    """The stored plan, or a new one. The settings that shape a unit's bytes (model, levels,
    batching) are part of the plan, so a restart must use the same ones."""
    path = os.path.join(out, store.PLAN)
    want = {"model_id": identity["model_id"], "input": os.fspath(source), "settings": settings}
    if os.path.isfile(path):
        plan = store.read_json(path)
        have = {k: plan.get(k) for k in want}
        if have != want:
            diff = {k: have[k] for k in want if have[k] != want[k]}
            raise ValueError(
                f"--out {out} holds a job started with {diff}: rerun with the same model, input "
                "and settings, or use another --out"
            )
        return plan
    records = inputs.read_records(source, split=split)
    inputs.fill_durations(records, workers)
    units = cut_units(records, unit_hours)
    plan = {
        "version": PLAN_VERSION, **want, "split": split, "unit_hours": unit_hours,
        "units": [[r.to_json() for r in u] for u in units],
    }  # fmt: skip
    store.write_json(path, plan)  # every process writes the same plan; one rename wins
    return store.read_json(path)


# --------------------------------------------------------------------------------------------
# Encoding


class _Progress:
    """tqdm bar in hours of audio, with the tokenize rate (audio hours per wall-clock hour)
    and the error count."""

    def __init__(self, total_hours: float, enabled: bool, desc: str):
        self.bar, self.start, self.done, self.errors = None, time.monotonic(), 0.0, 0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=round(total_hours, 4), desc=desc, unit="h", dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h "
                "[{elapsed}<{remaining}{postfix}]",
            )  # fmt: skip

    def update(self, hours: float, errors: int = 0):
        self.done += hours
        self.errors += errors
        if self.bar is not None:
            rate = self.done / max(time.monotonic() - self.start, 1e-9)  # audio h per wall s
            self.bar.set_postfix_str(f"{rate * 3600:,.0f} h/h, errors {self.errors}", False)
            self.bar.update(round(hours, 6))

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _committed(out: str, unit: int, num_units: int) -> dict | None:
    """The unit's sidecar if the unit is committed (its shard present, of the recorded size)."""
    side = os.path.join(out, store.sidecar_name(unit, num_units))
    shard = os.path.join(out, store.shard_name(unit, num_units))
    if not os.path.isfile(side):
        return None
    meta = store.read_json(side)
    if not os.path.isfile(shard) or os.path.getsize(shard) != meta["bytes"]:
        return None
    return meta


def _clean_unit(out: str, unit: int, num_units: int) -> None:
    """Removes the unit's temporaries and an uncommitted shard (killed between rename and
    sidecar)."""
    shard, side = store.shard_name(unit, num_units), store.sidecar_name(unit, num_units)
    for f in os.listdir(out):
        if store.is_tmp_of(f, shard) or store.is_tmp_of(f, side):
            os.remove(os.path.join(out, f))
    if not os.path.isfile(os.path.join(out, side)) and os.path.isfile(os.path.join(out, shard)):
        os.remove(os.path.join(out, shard))


def _commit_unit(out, unit, num_units, records, results, errors, identity, levels) -> dict:
    name = store.shard_name(unit, num_units)
    done = [r for r in records if r.key in results]  # key order
    tmp = store.write_shard_tmp(
        out, name, [store.pack_record(r.key, results[r.key][0]) for r in done]
    )
    _crash_point("shard_tmp", unit)
    digest, size = store.sha256_of(tmp), os.path.getsize(tmp)
    os.replace(tmp, os.path.join(out, name))
    _crash_point("shard_renamed", unit)
    metas = []
    for offset, r in enumerate(done):
        codes, meta = results[r.key]
        metas.append({**meta, "offset": offset, "frames": int(codes.shape[0])})
    sidecar = {
        "unit": unit, "num_units": num_units, "shard": name, "sha256": digest, "bytes": size,
        "model_id": identity["model_id"], "levels": levels, "num_records": len(done),
        "num_errors": len(errors), "hours": sum(m["duration"] for m in metas) / 3600,
        "frames": sum(m["frames"] for m in metas), "records": metas, "errors": errors,
    }  # fmt: skip
    store.write_json(os.path.join(out, store.sidecar_name(unit, num_units)), sidecar)
    return sidecar


# --------------------------------------------------------------------------------------------
# Finalize


def finalize(out: str, identity: dict, codec, levels: int, plan: dict) -> dict | None:
    """Index, lengths, errors and ``dataset.json`` once every unit is committed (else None)."""
    num_units = len(plan["units"])
    sidecars = [_committed(out, u, num_units) for u in range(num_units)]
    if any(s is None for s in sidecars):
        return None
    index, lengths, errors = [], [], []
    for s in sidecars:
        for m in s["records"]:
            index.append({**m, "shard": s["shard"]})
            lengths.append(m["frames"])
        errors.extend(s["errors"])
    store.write_atomic(
        os.path.join(out, store.INDEX), "".join(json.dumps(r, sort_keys=True) + "\n" for r in index)
    )
    with open(os.path.join(out, store.tmp_name(store.LENGTHS)), "wb") as f:
        np.save(f, np.asarray(lengths, np.int32))
    os.replace(os.path.join(out, store.tmp_name(store.LENGTHS)), os.path.join(out, store.LENGTHS))
    store.write_atomic(
        os.path.join(out, store.ERRORS),
        "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors),
    )
    _crash_point("finalize")
    dataset = dataset_metadata(identity, codec, levels, plan, sidecars)
    store.write_json(os.path.join(out, store.DATASET), dataset)
    return dataset


def dataset_metadata(identity, codec, levels, plan, sidecars) -> dict:
    import jax

    import hificodec_jax

    q = codec.quantizer
    groups, rate = q.num_groups, identity["sample_rate"]
    return {
        "format": store.FORMAT, "format_version": store.FORMAT_VERSION,
        "codec": {
            "model": identity["name"], "model_id": identity["model_id"],
            "config": identity["config"], "sample_rate": rate, "hop": codec.hop,
            "frame_rate": rate / codec.hop, "num_groups": groups, "num_levels": q.num_levels,
            "levels": levels, "streams": levels * groups, "codebook_size": q.codebook_size,
            "stream_order": "level-major: stream s is level s // num_groups of group "
            "s % num_groups",
            "dtype": "int16",
        },
        "input": plan["input"], "split": plan.get("split"), "unit_hours": plan["unit_hours"],
        "settings": plan["settings"],
        "shards": [s["shard"] for s in sidecars],
        "versions": {"hificodec_jax": hificodec_jax.__version__, "jax": jax.__version__,
                     "numpy": np.__version__},
        "totals": {
            "records": sum(s["num_records"] for s in sidecars),
            "errors": sum(s["num_errors"] for s in sidecars),
            "hours": sum(s["hours"] for s in sidecars),
            "frames": sum(s["frames"] for s in sidecars), "units": len(sidecars),
        },
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# The job


def tokenize(
    model,
    input: str | os.PathLike,  # noqa: A002 - the CLI's --input
    out: str | os.PathLike,
    *,
    levels: int | None = None,
    unit_hours: float = 1.0,
    batch_seconds: float = 240.0,
    max_batch: int = 64,
    window_seconds: float = 30.0,
    whole_seconds: float = 300.0,
    max_error_rate: float = 0.01,
    workers: int | None = None,
    split: str = "train",
    reject_silent: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize ``input`` into the store ``out``; returns a summary dict.

    ``model``: a model name or directory, or ``(codec, variables, identity)`` (see
    :func:`~hificodec_jax.tokens.encoding.resolve_model`). ``levels``: residual levels kept (default all). Units of about
    ``unit_hours`` of audio; clips up to ``window_seconds`` go in masked batches of at most
    ``max_batch`` rows and ``batch_seconds`` of padded audio; longer files are encoded alone
    (in windows with whole-file statistics past ``whole_seconds``). ``workers`` threads read
    audio (default: the CPU count, at most 16). ``reject_silent``: silent records are errors.
    ``process_index``/``process_count`` default to
    JAX's. Raises :class:`TokenizeError` once errors exceed ``max_error_rate`` of this
    process's records (committed work is kept) and ``ValueError`` for bad arguments.
    """
    import jax

    store.require_train_extra()
    for name, value in (("unit_hours", unit_hours), ("batch_seconds", batch_seconds),
                        ("window_seconds", window_seconds), ("whole_seconds", whole_seconds)):  # fmt: skip
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if not 0 <= max_error_rate <= 1:
        raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate}")
    started = time.monotonic()
    out = os.path.abspath(os.fspath(out))
    workers = workers or min(16, os.cpu_count() or 1)
    codec, variables, identity = encoding.resolve_model(model)
    levels = codec.quantizer.check_levels(levels)
    if codec.quantizer.codebook_size > 32768:
        raise ValueError("codes are stored as int16: codebooks above 32768 entries do not fit")
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index {pi} is not in [0, {pc})")
    os.makedirs(out, exist_ok=True)
    settings = dict(
        levels=levels, max_batch=max_batch, batch_seconds=batch_seconds,
        window_seconds=window_seconds, whole_seconds=whole_seconds, reject_silent=reject_silent,
    )  # fmt: skip
    plan = _load_or_make_plan(out, input, split, unit_hours, identity, settings, workers)
    units = [[Record.from_json(d) for d in u] for u in plan["units"]]
    num_units = len(units)
    mine = list(range(pi, num_units, pc))
    for u in mine:
        _clean_unit(out, u, num_units)
    committed = {u: s for u in mine if (s := _committed(out, u, num_units)) is not None}
    todo = [u for u in mine if u not in committed]
    planned = sum(len(units[u]) for u in mine)
    errors = sum(s["num_errors"] for s in committed.values())
    batching = {
        k: settings[k] for k in ("max_batch", "batch_seconds", "window_seconds", "whole_seconds")
    }
    rate = identity["sample_rate"]
    bar = _Progress(
        sum(r.duration or 0.0 for u in todo for r in units[u]) / 3600, progress,
        f"tokenize {len(todo)} units" + (f" (process {pi}/{pc})" if pc > 1 else ""),
    )  # fmt: skip
    hours_now, records_now = 0.0, 0
    try:
        encoder = encoding.Encoder(codec, variables, levels, rate) if todo else None
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for u in todo:
                results, unit_errors = encoding.encode_unit(
                    encoder, units[u], rate, pool, bar, batching, reject_silent
                )
                _crash_point("encoded", u)
                side = _commit_unit(
                    out, u, num_units, units[u], results, unit_errors, identity, levels
                )
                errors += side["num_errors"]
                hours_now += side["hours"]
                records_now += side["num_records"]
                if errors > max_error_rate * planned:
                    raise TokenizeError(
                        f"{errors} of this process's {planned} records failed (more than "
                        f"--max-error-rate {max_error_rate:g}); the units done so far are kept. "
                        f"Reasons: {os.path.join(out, store.sidecar_name(u, num_units))} and the "
                        "other units' sidecars"
                    )
    finally:
        bar.close()
    dataset = finalize(out, identity, codec, levels, plan)
    elapsed = time.monotonic() - started
    summary = {
        "out": out, "complete": dataset is not None, "units": num_units,
        "units_this_process": len(mine), "units_done_now": len(todo),
        "units_skipped": len(committed), "hours_done_now": hours_now,
        "records_done_now": records_now, "errors_this_process": errors,
        "seconds": elapsed, "hours_per_hour": hours_now * 3600 / max(elapsed, 1e-9),
    }  # fmt: skip
    if dataset is not None:
        summary.update(
            records=dataset["totals"]["records"], errors=dataset["totals"]["errors"],
            hours=dataset["totals"]["hours"],
        )  # fmt: skip
    if progress:
        if dataset is not None:
            t = dataset["totals"]
            line = (
                f"tokenized {t['hours']:.2f} h ({t['records']} records, {t['errors']} errors) "
                f"in {num_units} units -> {out}"
            )
        else:
            line = f"process {pi}/{pc}: {len(mine)} units done; other processes' units pending -> {out}"
        print(line, file=sys.stderr)
    return summary
