"""Inference benchmark: encode + decode of 10 s of 16 kHz audio, batch 1, configs/grvq4.py.

Prints progress lines, then one JSON object as the last line:
    encdec_s_median, encode_s_median, decode_s_median, compile_s, rtf (seconds of compute per
    second of audio), x_realtime, peak_rss_mib, probe_gflops (2048^2 fp32 matmul, measured in
    this run just before timing), model_gflops_per_s, probe_fraction, gflop (XLA's count).
The machines swing ~2x in speed: compare ratios measured in one run, not absolute times
(figures against the PyTorch reference: benchmarks/RESULTS.md).

Run: python benchmarks/inference.py [--seconds 10] [--repeats 5] [--config configs/grvq4.py]

``--worker``: the JAX half of an interleaved side-by-side run with the reference. Compiles with the
fixture weights, writes the input audio to ``--wav-out`` (``.npy``, for the other process), prints
``{"ready": ..., "gflop": ...}``, then for each ``run`` line on stdin times one encode + decode
after a matmul probe and prints one JSON line (``encode_s``, ``decode_s``, ``total_s``,
``probe_gflops``, ``probe_fraction``); ``quit`` or end of input stops it. A driver alternates it
with the reference so that the two never run at once.

``--chunked``: 60 s of audio (``--seconds``) through the chunked long-audio path
(``hificodec_jax.inference.long_files``) and through whole-file processing, each in its own process so
that peak RSS is measured separately; prints one JSON object with both (``chunked_rtf``,
``whole_rtf``, ``chunked_peak_rss_mib``, ``whole_peak_rss_mib``, ``max_abs_diff``,
``rel_rms_diff``). Released configs run with the parity fixtures' reference-layout weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import hificodec_jax
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.models.layers import fold_weight_norm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_probe(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n`` fp32 matmul (median), the machine's reachable ceiling."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def random_variables(codec, num_samples: int, seed: int = 0):
    """Random variables of the right structure without compiling ``codec.init``."""
    shapes = jax.eval_shape(
        codec.init, jax.random.key(0), jax.ShapeDtypeStruct((1, num_samples), jnp.float32)
    )
    rng = np.random.default_rng(seed)

    def draw(s):
        if s.dtype == bool:
            return np.ones(s.shape, bool)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return (rng.standard_normal(s.shape) / np.sqrt(max(fan_in, 1)) * 0.5).astype(s.dtype)

    return jax.tree.map(draw, shapes)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cost_gflop(compiled) -> float:
    """XLA's FLOP count of a compiled or lowered function, in GFLOP (NaN where unavailable)."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        return float(cost.get("flops", float("nan"))) / 1e9
    except Exception:  # cost analysis is best-effort
        return float("nan")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "grvq4.py"))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunked", action="store_true", help="chunked vs whole file (60 s)")
    p.add_argument("--mode", choices=("whole", "chunked"), help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help="timed runs on request (stdin)")
    p.add_argument("--wav-out", help="with --worker: save the input audio here (.npy)")
    args = p.parse_args(argv)
    if args.chunked:
        return compare_chunked(args)
    if args.worker:
        return worker(args)
    if args.mode:
        return run_mode(args)

    config = hificodec_jax.load_config(args.config)
    sr = config.audio.sample_rate
    codec = hificodec_jax.build_codec(config, weight_norm=False)  # folded: inference form
    wn_codec = hificodec_jax.build_codec(config)
    variables = random_variables(wn_codec, codec.hop)
    variables = {**variables, "params": fold_weight_norm(variables["params"])}
    variables = jax.device_put(variables)
    wav = jnp.asarray(synthetic_speech(sr, args.seconds)[None])

    encode_fn = jax.jit(lambda v, x: codec.apply(v, x, method="encode"))
    decode_fn = jax.jit(lambda v, c: codec.apply(v, c, method="decode"))
    streams = config.model.quantizer.num_levels * config.model.quantizer.num_groups
    codes_spec = jax.ShapeDtypeStruct((1, wav.shape[1] // codec.hop, streams), jnp.int32)
    t = time.perf_counter()  # trace + lower + compile, both jitted functions
    encode = encode_fn.lower(variables, wav).compile()
    decode = decode_fn.lower(variables, codes_spec).compile()
    compile_s = time.perf_counter() - t
    gflop = cost_gflop(encode) + cost_gflop(decode)
    decode(variables, encode(variables, wav)).block_until_ready()  # warm-up run
    print(f"compiled in {compile_s:.2f} s; {gflop:.0f} GFLOP per call", file=sys.stderr)

    probe = matmul_probe()
    enc_t, dec_t = [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        codes = encode(variables, wav).block_until_ready()
        t1 = time.perf_counter()
        decode(variables, codes).block_until_ready()
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
        print(f"run {i}: encode {t1 - t0:.3f} s, decode {t2 - t1:.3f} s", file=sys.stderr)
    total = [e + d for e, d in zip(enc_t, dec_t, strict=True)]
    med = statistics.median(total)
    result = {
        "config": os.path.relpath(args.config, REPO),
        "audio_s": args.seconds,
        "devices": str(jax.devices()[0].platform),
        "encdec_s_median": round(med, 4),
        "encode_s_median": round(statistics.median(enc_t), 4),
        "decode_s_median": round(statistics.median(dec_t), 4),
        "compile_s": round(compile_s, 3),
        "rtf": round(med / args.seconds, 4),
        "x_realtime": round(args.seconds / med, 3),
        "peak_rss_mib": round(rss_mib(), 1),
        "probe_gflops": round(probe, 1),
        "gflop": round(gflop, 1),
        "model_gflops_per_s": round(gflop / med, 1),
        "probe_fraction": round(gflop / med / probe, 3),
    }
    print(json.dumps(result))
    return result


# Reference-layout weights from the parity fixtures' numpy recipe (tests/data/academicodec): the
# released models' structure with reference-like scales, so outputs are not saturated noise.
FIXTURE_CASES = {
    "grvq4.py": "16k_320d",
    "grvq4_24k_320d.py": "24k_320d",
    "grvq4_24k_240d.py": "24k_240d",
}


def fixture_variables(config_path: str, codec):
    """Fixture weights for the released configs, else ``None``."""
    import importlib.util

    from hificodec_jax.reference.convert import torch_to_flax

    case = FIXTURE_CASES.get(os.path.basename(config_path))
    recipe = os.path.join(REPO, "tests", "data", "academicodec", "make_weights.py")
    if case is None or not os.path.exists(recipe):
        return None
    spec = importlib.util.spec_from_file_location("make_weights", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return torch_to_flax(module.make_state_dict(case), codec)


def _setup(args):
    config = hificodec_jax.load_config(args.config)
    codec = hificodec_jax.build_codec(config, weight_norm=False)
    codec_wn = hificodec_jax.build_codec(config)
    variables = fixture_variables(args.config, codec_wn)
    if variables is None:
        variables = random_variables(codec_wn, codec.hop)
    variables = {**variables, "params": fold_weight_norm(variables["params"])}
    wav = synthetic_speech(config.audio.sample_rate, args.seconds)
    return config, codec, jax.device_put(variables), wav


def run_mode(args) -> dict:
    """One mode in this process: encode + decode once (after a warm-up), time and peak RSS."""

    config, codec, variables, wav = _setup(args)
    sr = config.audio.sample_rate
    if args.mode == "chunked":
        from hificodec_jax.inference import long_files

        def run():
            codes = long_files.chunked_encode(codec, variables, wav, sample_rate=sr)
            return long_files.chunked_decode(codec, variables, codes, sample_rate=sr)
    else:
        enc = jax.jit(lambda v, x: codec.apply(v, x, method="encode"))
        dec = jax.jit(lambda v, c: codec.apply(v, c, method="decode"))

        def run():
            return np.asarray(dec(variables, enc(variables, jnp.asarray(wav[None]))))[0]

    t = time.perf_counter()
    out = run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = run()
    steady = time.perf_counter() - t
    np.save(os.environ.get("HFC_BENCH_OUT", os.devnull), out)
    result = {"mode": args.mode, "first_s": first, "steady_s": steady, "peak_rss_mib": rss_mib()}
    print(json.dumps(result))
    return result


def worker(args) -> dict:
    """Serve timed encode + decode runs on request (see the module docstring)."""
    _, codec, variables, wav = _setup(args)
    if args.wav_out:
        np.save(args.wav_out, wav.astype(np.float32))
    wav = jnp.asarray(wav[None])
    enc = jax.jit(lambda v, x: codec.apply(v, x, method="encode"))
    dec = jax.jit(lambda v, c: codec.apply(v, c, method="decode"))
    codes = enc(variables, wav)
    dec(variables, codes).block_until_ready()  # compile and warm up
    gflop = cost_gflop(enc.lower(variables, wav).compile())
    gflop += cost_gflop(dec.lower(variables, codes).compile())
    print(json.dumps({"ready": True, "gflop": round(gflop, 1)}), flush=True)
    result = {}
    for line in sys.stdin:
        if line.strip() != "run":
            break
        probe = matmul_probe()
        t0 = time.perf_counter()
        codes = enc(variables, wav).block_until_ready()
        t1 = time.perf_counter()
        dec(variables, codes).block_until_ready()
        t2 = time.perf_counter()
        result = {
            "encode_s": round(t1 - t0, 4),
            "decode_s": round(t2 - t1, 4),
            "total_s": round(t2 - t0, 4),
            "probe_gflops": round(probe, 1),
            "probe_fraction": round(gflop / (t2 - t0) / probe, 3),
        }
        print(json.dumps(result), flush=True)
    return result


def compare_chunked(args) -> dict:
    seconds = args.seconds if args.seconds != 10.0 else 60.0
    results, outs = {}, {}
    for mode in ("whole", "chunked"):
        out_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hfc_bench_{mode}.npy")
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--seconds",
            str(seconds),
            "--config",
            args.config,
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "HFC_BENCH_OUT": out_path},
        )
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        outs[mode] = np.load(out_path)
        os.remove(out_path)
        print(f"{mode}: {results[mode]}", file=sys.stderr)
    result = {
        "audio_s": seconds,
        "whole_rtf": round(results["whole"]["steady_s"] / seconds, 4),
        "chunked_rtf": round(results["chunked"]["steady_s"] / seconds, 4),
        "whole_peak_rss_mib": round(results["whole"]["peak_rss_mib"], 1),
        "chunked_peak_rss_mib": round(results["chunked"]["peak_rss_mib"], 1),
        "max_abs_diff": float(np.max(np.abs(outs["whole"] - outs["chunked"]))),
        "rel_rms_diff": float(
            np.sqrt(np.mean((outs["whole"] - outs["chunked"]) ** 2) / np.mean(outs["whole"] ** 2))
        ),
        "output_rms": float(np.sqrt(np.mean(outs["whole"] ** 2))),
        "probe_gflops": round(matmul_probe(), 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
