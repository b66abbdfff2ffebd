"""Tokenize benchmark: audio hours tokenized per wall-clock hour, end to end from files, against
the model alone (``encode_batch`` on clips already in memory) and a batch-1 loop.

configs/grvq4.py (the released 16 kHz / hop-320 architecture) with random weights (speed does
not depend on them), on synthetic speech-like clips (``demo_audio.synthetic_speech``) of
uniformly drawn lengths in 1-20 s, written half as 16-bit WAV, half as FLAC. The batch-1 loop
is ``encode_batch(max_batch=1)`` (each clip alone, padded to its length bucket, as a JAX loop
must to avoid a compile per length). Every figure is measured warm (a first pass compiles
every shape); the end-to-end job's cold first pass is reported beside it. One JSON line:

    clips, audio_s, end_to_end_h_per_h, end_to_end_cold_h_per_h, model_only_h_per_h,
    batch1_h_per_h, end_to_end_vs_model, end_to_end_vs_batch1, device, cpus

The model-only figure runs the job's own batches of the same clips from memory (no reading,
no writing), so the two differ only by the pipeline around the device.

Run: python benchmarks/tokenize_corpus.py [--minutes 1.5] [--max-batch 64] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import jax
import numpy as np
import soundfile as sf
from inference import random_variables

import hificodec_jax
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.inference.batching import bucket, encode_batch
from hificodec_jax.tokens import encoding, inputs, job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=1.5, help="audio in the corpus")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()

    cfg = hificodec_jax.load_config(os.path.join(REPO, "configs", "grvq4.py"))
    codec = hificodec_jax.build_codec(cfg, weight_norm=False)
    variables = jax.device_put(random_variables(codec, 4 * codec.hop))
    result = measure(codec, variables, args.minutes, args.max_batch, args.workers)
    print(json.dumps({**result, "cpus": os.cpu_count(), "weights": "random"}))


def measure(codec, variables, minutes: float, max_batch: int, workers: int | None = None) -> dict:
    """The figures of the module docstring for ``codec`` (16 kHz) on ``minutes`` of clips.
    Also used by ``benchmarks/device.py``."""
    model = (codec, variables, {"sample_rate": RATE, "name": "random weights"})
    rng = np.random.default_rng(0)
    lengths, total = [], 0.0
    while total < minutes * 60:
        lengths.append(float(rng.uniform(1.0, 20.0)))
        total += lengths[-1]
    work = tempfile.mkdtemp(prefix="tokenize_bench_")
    try:
        wavs = []
        os.makedirs(os.path.join(work, "in"))
        for i, seconds in enumerate(lengths):
            path = os.path.join(work, "in", f"c{i:04d}.{'wav' if i % 2 else 'flac'}")
            sf.write(path, synthetic_speech(RATE, seconds, seed=i), RATE, subtype="PCM_16")
            wavs.append(sf.read(path, dtype="float32")[0])
        audio_s = sum(w.shape[0] for w in wavs) / RATE

        def end_to_end(name):
            t = time.perf_counter()
            job.tokenize(
                model, os.path.join(work, "in"), os.path.join(work, name), max_batch=max_batch,
                workers=workers, progress=False, max_error_rate=0.0,
            )  # fmt: skip
            return time.perf_counter() - t

        cold = end_to_end("cold")  # also compiles every shape the job uses
        warm = end_to_end("warm")
        # The model alone: the job's own batches of the same clips, already in memory.
        records = inputs.read_records(os.path.join(work, "in"))
        inputs.fill_durations(records)
        durations = {r.key: r.duration for r in records}
        by_key = dict(zip(sorted(durations), wavs, strict=True))
        encoder = encoding.Encoder(codec, variables, None, RATE)
        settings = dict(max_batch=max_batch, batch_seconds=240.0, window_seconds=30.0,
                        whole_seconds=300.0)  # fmt: skip
        batches = [
            [by_key[r.key] for r in group] for _, group in encoding._batches(records, **settings)
        ]

        def model_pass() -> float:
            t = time.perf_counter()
            pending = [encoder.batch(b, max_batch) for b in batches]
            for handle in pending:
                encoder.collect(handle)
            return time.perf_counter() - t

        model_pass()  # this encoder's programs compile here, not in the timed pass
        model_only = model_pass()
        # One clip per call (as UniAudio, ESPnet): compile each length bucket once first.
        firsts = {bucket(w.shape[0], 4 * codec.hop): w for w in wavs}
        encode_batch(codec, variables, list(firsts.values()), max_batch=1)
        t = time.perf_counter()
        encode_batch(codec, variables, wavs, max_batch=1)
        loop = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = lambda seconds: audio_s / seconds  # noqa: E731 - audio hours per wall-clock hour
    return {
        "clips": len(wavs), "audio_s": round(audio_s, 1),
        "end_to_end_h_per_h": round(rate(warm), 1),
        "end_to_end_cold_h_per_h": round(rate(cold), 1),
        "model_only_h_per_h": round(rate(model_only), 1),
        "batch1_h_per_h": round(rate(loop), 1),
        "end_to_end_vs_model": round(model_only / warm, 3),
        "end_to_end_vs_batch1": round(loop / warm, 2),
        "device": jax.devices()[0].device_kind, "audio": "synthetic speech-like, 1-20 s",
    }  # fmt: skip


if __name__ == "__main__":
    main()
