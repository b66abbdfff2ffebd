"""``tokenize --verify``: checks a finished store against its plan, its checksums and the model.

Checks: every shard's SHA-256 equals its sidecar's; every planned key is in the store or in
the error list exactly once; every record reads back, at its index position, with
``frames == num_samples // hop`` codes of the declared stream count; and ``sample`` random
records re-encoded alone give the stored codes. Re-encoding on another machine, device or
XLA version may round differently, so a frame whose code sits at a near-tie may flip: at most
one frame per thousand may differ (``LONG_AGREEMENT`` of frames must agree for records that
went through the long-file path); a wrong model, a corrupt record or padding leaking into the
statistics changes most frames.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from hificodec_jax.tokens import inputs, store

AGREEMENT = 0.999
LONG_AGREEMENT = 0.99


def verify(out: str | os.PathLike, *, sample: int = 8, model=None, seed: int = 0) -> dict:
    """``{ok, problems: [str], records, errors, shards, reencoded}`` for the store ``out``.

    ``model`` (name, directory or ``(codec, variables, identity)``) defaults to the store's
    own; ``sample`` records (seeded by ``seed``) are re-encoded alone, 0 skips that check.
    """
    from hificodec_jax.tokens.encoding import resolve_model

    out = os.path.abspath(os.fspath(out))
    problems: list[str] = []
    source = store.TokenSource(out)  # FileNotFoundError when the job has not finished
    meta = source.metadata
    codec_meta = meta["codec"]
    plan = store.read_json(os.path.join(out, store.PLAN))
    num_units = len(plan["units"])
    # Checksums and coverage.
    seen: dict[str, int] = {}
    num_errors = 0
    for u in range(num_units):
        side_path = os.path.join(out, store.sidecar_name(u, num_units))
        if not os.path.isfile(side_path):
            problems.append(f"unit {u}: no sidecar {os.path.basename(side_path)}")
            continue
        side = store.read_json(side_path)
        shard = os.path.join(out, side["shard"])
        if not os.path.isfile(shard):
            problems.append(f"{side['shard']}: missing")
        elif (digest := store.sha256_of(shard)) != side["sha256"]:
            problems.append(f"{side['shard']}: sha256 {digest} != {side['sha256']} (corrupt)")
        for r in side["records"] + side["errors"]:
            seen[r["key"]] = seen.get(r["key"], 0) + 1
        num_errors += len(side["errors"])
    planned = {r["key"] for u in plan["units"] for r in u}
    if missing := sorted(planned - set(seen)):
        problems.append(f"{len(missing)} planned keys missing, e.g. {missing[:5]}")
    if extra := sorted(set(seen) - planned):
        problems.append(f"{len(extra)} keys not in the plan, e.g. {extra[:5]}")
    if twice := sorted(k for k, c in seen.items() if c > 1):
        problems.append(f"{len(twice)} keys stored more than once, e.g. {twice[:5]}")
    # Every record reads back where the index says, shard by shard.
    hop, streams = codec_meta["hop"], codec_meta["streams"]
    positions: dict[str, list[int]] = {}
    for i in range(len(source)):
        positions.setdefault(source.info(i)["shard"], []).append(i)
    module = store.require_train_extra()
    for shard, rows in positions.items():
        try:
            reader = module.ArrayRecordReader(os.path.join(out, shard))
            raws = reader.read(list(range(len(rows))))
            reader.close()
        except Exception as e:  # a corrupt shard fails to open or decode
            problems.append(f"{shard}: unreadable ({type(e).__name__}: {e})")
            continue
        for i, raw in zip(rows, raws, strict=True):
            info, rec = source.info(i), store.unpack_record(raw)
            want = (info["num_samples"] // hop, streams)
            if rec["key"] != info["key"]:
                problems.append(f"record {i}: key {rec['key']!r}, the index says {info['key']!r}")
            elif rec["codes"].shape != want or int(source.lengths[i]) != want[0]:
                problems.append(
                    f"{info['key']}: codes {rec['codes'].shape}, length "
                    f"{int(source.lengths[i])}; expected {want} (frames = samples // hop)"
                )
    # Re-encode a sample alone.
    reencoded = exact = 0
    if sample > 0 and len(source):
        codec, variables, identity = resolve_model(model or codec_meta["model"])
        if identity["model_id"] != codec_meta["model_id"]:
            problems.append(
                f"the model's id {identity['model_id']} is not the store's {codec_meta['model_id']}"
            )
        else:
            encode = _encoder(codec, codec_meta["levels"])
            rng = np.random.default_rng(seed)
            for i in sorted(rng.choice(len(source), min(sample, len(source)), replace=False)):
                info = source.info(int(i))
                record = _record_of(info)
                wav, _, _ = inputs.load_audio(
                    record, codec_meta["sample_rate"], hop, reject_silent=False
                )
                alone = np.asarray(encode(variables, wav)).astype(np.int16)
                try:
                    stored = source[int(i)]["codes"]
                except Exception:  # unreadable: reported above
                    continue
                reencoded += 1
                if alone.shape != stored.shape:
                    problems.append(
                        f"{info['key']}: re-encoded {alone.shape} != stored {stored.shape}"
                    )
                    continue
                differ = int(np.sum(np.any(alone != stored, axis=-1)))
                share = LONG_AGREEMENT if info.get("long_path") else AGREEMENT
                exact += differ == 0
                if differ > max(1, int((1 - share) * stored.shape[0])):
                    agree = 1 - differ / max(stored.shape[0], 1)
                    problems.append(
                        f"{info['key']}: re-encoded alone, {agree:.2%} of frames equal the stored codes"
                    )
    return {
        "ok": not problems, "problems": problems, "records": len(source), "errors": num_errors,
        "shards": num_units, "reencoded": reencoded,
        "reencoded_exact": exact,
    }  # fmt: skip


def _record_of(info: dict) -> inputs.Record:
    return inputs.Record(
        key=info["key"], path=info["source"], start=info.get("start"), end=info.get("end"),
        index=info.get("index"),
    )  # fmt: skip


@functools.cache
def _encoder(codec, levels: int):
    import jax

    return jax.jit(functools.partial(codec.apply, method="encode", num_levels=levels))
