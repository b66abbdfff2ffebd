"""Accelerator benchmark (one GPU or TPU chip): codec throughput and the train step, float32 and
bfloat16, as one JSON line on stdout (progress on stderr).

* ``inference``: encode + decode of ``--seconds`` clips of ``configs/grvq4.py`` in one program,
  batch 1 and 64: seconds per call (median), ``x_realtime`` (audio seconds per second),
  XLA's FLOP count and MFU.
* ``train``: the grvq4 train step (MPD + MSD + MS-STFT) on 1 s segments, batch 16 and 64:
  ``step_s`` (median), ``compile_s`` (each program's own compile wall time; the programs are
  compiled concurrently to fit the time box, so these overlap), ``program_mib`` (XLA's buffer
  assignment: arguments + outputs + temporaries - aliased), ``peak_mib_after`` (the device's
  peak bytes in use so far in this process, where the backend reports it), FLOPs and MFU.
* ``streaming``: ``DecodeStream`` (float32, exact lookahead, batch 1) pushing ``--stream-seconds``
  of codes at 1, 5 and 10-frame chunks: push latency (median, p99), streaming compute over
  whole-sequence decoding of the same codes, and 8 streams in one program at 1-frame chunks
  (``benchmarks/streaming.py``'s measurement).
* ``tokenize``: the corpus tokenizing job on ``--tokenize-minutes`` of synthetic speech-like
  clips of 1-20 s (16-bit WAV and FLAC): audio hours per chip-hour end to end from the files,
  the model alone on the job's batches, and a batch-1 loop (``benchmarks/tokenize_corpus.py``'s
  measurement; the issue's goal on one chip is 1,000).
* MFU is XLA's FLOP count of the program over its time, against the chip's dense bf16 peak
  (:data:`PEAK_BF16_TFLOPS`, matched on ``device_kind``; ``--peak-tflops`` overrides). float32
  programs are also measured against the bf16 peak.

Weights are random (throughput does not depend on their values). A case that fails (e.g. out
of memory) is reported with its error instead of its figures. The run is meant to take under 8
minutes on one H100/H200 (not yet run on one: the programs compile concurrently, 4 at a time,
for that reason). ``--smoke`` runs the same code on CPU with ``configs/tiny.py`` cut down (the
test suite runs it).

Imports: this package, jax, flax, optax, orbax and their dependencies (``ml_collections``, which
the configs use, must be installed too; it is pure Python).

Run: python benchmarks/device.py [--smoke] [--repeats 5] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the measurements shared below
from inference import random_variables

import hificodec_jax
from configs.tiny import SMALL_STEP_OVERRIDES
from hificodec_jax import factory
from hificodec_jax.training import compilation, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense (no sparsity) bf16 peak of one chip, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM
    "H200": 989.4,
    "H800": 989.4,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: ratios of reported figures stay exact to 0.1 %."""
    return float(f"{x:.{digits}g}")


def _note(msg: str) -> None:
    print(f"[device.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_bf16_tflops(device) -> float | None:
    """The chip's dense bf16 peak from :data:`PEAK_BF16_TFLOPS` (longest matching name)."""
    kind = getattr(device, "device_kind", "")
    matches = [name for name in PEAK_BF16_TFLOPS if name.lower() in kind.lower()]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    value = (cost or {}).get("flops")
    return float(value) if value and value > 0 else None


def _program_mib(compiled) -> float | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return round(total / 2**20, 1)


def _peak_mib(device) -> float | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    peak = (stats or {}).get("peak_bytes_in_use")
    return round(peak / 2**20, 1) if peak else None


def _mfu(flops, seconds, peak_tflops) -> float | None:
    if not flops or not peak_tflops:
        return None
    return _sig(flops / seconds / (peak_tflops * 1e12))


def _median_s(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _compile_all(lowered: dict) -> dict:
    """``{name: (compiled or exception, seconds)}``, compiled concurrently."""

    def one(item):
        name, low = item
        t = time.perf_counter()
        try:
            result = low.compile()
        except Exception as e:  # reported in the JSON
            result = e
        return name, result, time.perf_counter() - t

    workers = max(1, min(len(lowered), 4))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one, lowered.items()))
    for name, result, seconds in done:
        _note(
            f"compiled {name} in {seconds:.1f} s"
            + ("" if not isinstance(result, Exception) else f": {result!r}"[:300])
        )
    return {name: (result, seconds) for name, result, seconds in done}


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _signal(batch: int, samples: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a few harmonics with a slow pitch glide plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sample_rate
    out = np.empty((batch, samples), np.float32)
    for i in range(batch):
        f0 = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        wav = sum(np.sin(k * phase) / k for k in range(1, 6))
        out[i] = 0.3 * wav / 2.3 + 0.01 * rng.standard_normal(samples)
    return out


def _with_precision(config, precision: str):
    if "precision" not in config:
        raise ValueError("this config has no precision option (config.precision)")
    config = config.copy_and_resolve_references()
    config.precision = precision
    return config


def bench_inference(config, batches, seconds: float, precisions, repeats: int, peak) -> list:
    """Encode + decode throughput for each precision and batch size."""
    sr = config.audio.sample_rate
    hop = factory.hop_length(config)
    samples = max(hop, int(seconds * sr) // hop * hop)
    codec32 = factory.build_codec(config, weight_norm=False)
    variables = jax.device_put(random_variables(codec32, 4 * hop))
    programs, lowered = {}, {}
    for precision in precisions:
        codec = factory.build_codec(_with_precision(config, precision), weight_norm=False)

        def roundtrip(v, wav, codec=codec):
            codes = codec.apply(v, wav, method="encode")
            return codec.apply(v, codes, method="decode")

        fn = jax.jit(roundtrip)
        for b in batches:
            name = f"{precision}/b{b}"
            lowered[name] = fn.lower(variables, jax.ShapeDtypeStruct((b, samples), jnp.float32))
            programs[name] = (precision, b)
    compiled = _compile_all(lowered)
    results = []
    for name, (precision, b) in programs.items():
        entry = {"precision": precision, "batch": b, "seconds_per_clip": samples / sr}
        program, compile_s = compiled[name]
        entry["compile_s"] = round(compile_s, 1)
        if isinstance(program, Exception):
            results.append({**entry, "error": _error(program)})
            continue
        try:
            wav = jax.device_put(_signal(b, samples, sr))
            step_s = _median_s(lambda program=program, wav=wav: program(variables, wav), repeats)
        except Exception as e:  # reported in the JSON
            results.append({**entry, "error": _error(e)})
            continue
        flops = _flops(program)
        entry.update(
            call_s=_sig(step_s),
            x_realtime=_sig(b * samples / sr / step_s),
            gflop=_sig(flops / 1e9) if flops else None,
            mfu=_mfu(flops, step_s, peak),
            program_mib=_program_mib(program),
        )
        _note(f"inference {name}: {step_s * 1e3:.1f} ms, {entry['x_realtime']}x real time")
        results.append(entry)
    return results


def bench_streaming(config, seconds: float, rounds: int) -> dict:
    """``benchmarks/streaming.py``'s figures on this chip (float32, random weights)."""
    import streaming as streaming_bench

    codec = factory.build_codec(config, weight_norm=False)
    variables = jax.device_put(random_variables(codec, 4 * codec.hop))
    try:
        out = streaming_bench.measure(codec, variables, config.audio.sample_rate, seconds, rounds)
    except Exception as e:  # reported in the JSON
        return {"error": _error(e)}
    _note(f"streaming 1-frame push: {out['chunks']['1']['push_ms_median']} ms median")
    return out


def bench_tokenize(config, minutes: float, max_batch: int) -> dict:
    """``benchmarks/tokenize_corpus.py``'s figures on this chip (random weights, 16 kHz)."""
    import tokenize_corpus

    if config.audio.sample_rate != tokenize_corpus.RATE:
        return {"error": f"the tokenize case needs a {tokenize_corpus.RATE} Hz config"}
    codec = factory.build_codec(config, weight_norm=False)
    variables = jax.device_put(random_variables(codec, 4 * codec.hop))
    try:
        out = tokenize_corpus.measure(codec, variables, minutes, max_batch)
    except Exception as e:  # reported in the JSON
        return {"error": _error(e)}
    _note(f"tokenize: {out['end_to_end_h_per_h']} audio hours per chip-hour end to end")
    return out


def bench_train(config, batches, precisions, repeats: int, peak) -> list:
    """The train step for each precision and batch size (one state, carried through)."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    device = jax.devices()[0]
    sr = config.audio.sample_rate
    seg = config.data.segment_size
    programs, lowered, init = {}, {}, None
    for precision in precisions:
        for b in batches:
            cfg = _with_precision(config, precision)
            cfg.batch_size = b
            _, init_b, abstract, step = compilation.build(cfg, mesh)
            init = init or init_b  # the state does not depend on the precision or batch
            name = f"{precision}/b{b}"
            lowered[name] = step.lower(abstract, compilation.batch_spec(cfg, mesh))
            programs[name] = (precision, b)
            _note(f"traced the train step {name}")
    lowered["init"] = init.lower(jax.random.key(0))
    compiled = _compile_all(lowered)
    init_program = compiled["init"][0]
    if isinstance(init_program, Exception):
        raise init_program
    state = init_program(jax.random.key(0))
    results = []
    for name, (precision, b) in programs.items():
        entry = {"precision": precision, "batch": b, "segment_s": seg / sr}
        program, compile_s = compiled[name]
        entry["compile_s"] = round(compile_s, 1)
        if isinstance(program, Exception):
            results.append({**entry, "error": _error(program)})
            continue
        wav = _signal(b, seg, sr, seed=b)
        batch = sharding.shard_batch({"wav": wav, "lengths": np.full((b,), seg, np.int32)}, mesh)
        try:
            state, metrics = program(state, batch)  # warm-up
            jax.block_until_ready(metrics)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                state, metrics = program(state, batch)
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - t)
        except Exception as e:  # reported in the JSON
            results.append({**entry, "error": _error(e)})
            state = init_program(jax.random.key(0))  # the failed call may have taken the state
            continue
        step_s = statistics.median(times)
        flops = _flops(program)
        metrics = jax.device_get(metrics)
        entry.update(
            step_s=_sig(step_s),
            audio_s_per_s=_sig(b * seg / sr / step_s),
            gflop=_sig(flops / 1e9) if flops else None,
            mfu=_mfu(flops, step_s, peak),
            program_mib=_program_mib(program),
            peak_mib_after=_peak_mib(device),
            mel_loss=float(metrics["loss/mel"]) if "loss/mel" in metrics else None,
        )
        _note(f"train {name}: {step_s * 1e3:.1f} ms/step, mfu {entry['mfu']}")
        results.append(entry)
    return results


def main(argv=None) -> dict:
    """Runs the benchmark; prints and returns the result dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny config, small batches")
    p.add_argument("--config", default=None, help="default configs/grvq4.py (tiny with --smoke)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 5)")
    p.add_argument("--seconds", type=float, default=None, help="inference clip length")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--infer-batches", default=None, help="default 1,64")
    p.add_argument("--train-batches", default=None, help="default 16,64")
    p.add_argument("--peak-tflops", type=float, default=None, help="chip's dense bf16 peak")
    p.add_argument("--stream-seconds", type=float, default=None, help="default 10 (0.5 smoke)")
    p.add_argument("--tokenize-minutes", type=float, default=None, help="default 10 (0.2 smoke)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    device = jax.devices()[0]
    smoke = args.smoke
    name = args.config or os.path.join(REPO, "configs", "tiny.py" if smoke else "grvq4.py")
    config = hificodec_jax.load_config(name)
    if smoke:
        config.update_from_flattened_dict(SMALL_STEP_OVERRIDES)
    else:
        config.data.segment_size = config.audio.sample_rate  # 1 s
    config.disc.families = config.disc.families if smoke else ("mpd", "msd", "stft")
    precisions = tuple(args.precisions.split(","))
    repeats = args.repeats or (1 if smoke else 5)
    seconds = args.seconds or (0.5 if smoke else 10.0)
    infer_b = tuple(int(b) for b in (args.infer_batches or ("1,2" if smoke else "1,64")).split(","))
    train_b = tuple(int(b) for b in (args.train_batches or ("2" if smoke else "16,64")).split(","))
    peak = args.peak_tflops or peak_bf16_tflops(device)
    _note(f"{device.platform} {device.device_kind}, bf16 peak {peak} TFLOP/s, config {name}")

    result = {
        "benchmark": "device",
        "smoke": smoke,
        "config": os.path.relpath(name, REPO),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "peak_bf16_tflops": peak,
        "disc_families": list(config.disc.families),
    }
    result["inference"] = bench_inference(config, infer_b, seconds, precisions, repeats, peak)
    _note(f"partial result: {json.dumps(result)}")  # kept on stderr should the run be cut off
    result["train"] = bench_train(config, train_b, precisions, repeats, peak)
    _note(f"partial result: {json.dumps(result)}")
    stream_s = args.stream_seconds or (0.5 if smoke else 10.0)
    result["streaming"] = bench_streaming(config, stream_s, 1 if smoke else 3)
    minutes = args.tokenize_minutes or (0.2 if smoke else 10.0)
    result["tokenize"] = bench_tokenize(config, minutes, 8 if smoke else 64)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
