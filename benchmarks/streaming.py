"""Streaming decode benchmark: configs/grvq4.py with random weights (no trained model offline).

Prints one JSON object as the last line. Default: per-push latency of
:class:`hificodec_jax.models.decode_stream.DecodeStream` (batch 1, exact lookahead) at chunks of 1, 5
and 10 frames over 10 s of random codes, on one CPU thread and on the whole machine (each in its
own process): ``push_ms_median``, ``push_ms_p99`` over every push of ``--rounds`` rounds (the
compiling push is separate: ``compile_s``), ``rtf`` (streaming compute per second of audio),
``compute_ratio`` (streaming compute / one whole-sequence ``decode`` of the same codes, the two
alternating round by round; median and range), plus ``offline_rtf``, ``probe_gflops`` (2048^2
fp32 matmul), ``algorithmic_latency_ms`` and ``batch8_chunk1`` (8 streams in one program at
1-frame chunks, against 8 whole-sequence decodes of batch 1).

``--tradeoff``: the lookahead trade-off on real speech (Debian's codec2-examples
``speech_orig_16k.wav``, or ``--wav``): the same random-weight model encodes the speech, then
whole decoding is compared with streaming at chunk 1 and lookahead 0, 2, 4, 8 and exact
(``snr_db`` and ``max_abs_err`` against whole decoding); ``--model NAME_OR_DIR`` uses a trained
model instead (``hificodec_jax.load``).

Run: python benchmarks/streaming.py [--seconds 10] [--tradeoff [--wav FILE] [--model M]]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
WEIGHTS = "random (configs/grvq4.py architecture, param_init_key(key(0)) init; no trained model)"


def _setup(model: str | None = None):
    import jax
    import jax.numpy as jnp

    import hificodec_jax

    if model:  # a released model by name, or a model directory
        loaded = hificodec_jax.load(model)
        return loaded.codec, loaded.variables, loaded.sample_rate
    cfg = hificodec_jax.load_config(os.path.join(REPO, "configs", "grvq4.py"))
    sample_rate = cfg.audio.sample_rate
    codec = hificodec_jax.build_codec(cfg, weight_norm=False)  # the inference form, as load()
    init = jax.jit(codec.init)
    variables = init(hificodec_jax.param_init_key(jax.random.key(0)), jnp.zeros((1, codec.hop)))
    return codec, variables, sample_rate


def worker(seconds: float, rounds: int) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from inference import matmul_probe

    out = measure(*_setup(), seconds, rounds)
    out["probe_gflops"] = round(matmul_probe(), 1)
    return out


def measure(
    codec, variables, sample_rate: int, seconds: float, rounds: int, chunks=(1, 5, 10), batch=8
) -> dict:
    """Push latencies of ``DecodeStream`` at each chunk size over ``seconds`` of random codes,
    and compute against whole-sequence ``decode`` (alternating, ``rounds`` times); then
    ``batch`` streams in one program at 1-frame chunks against ``batch`` offline decodes.
    Also used by ``benchmarks/device.py``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hificodec_jax.models import streaming
    from hificodec_jax.models.decode_stream import DecodeStream

    frames = int(seconds * sample_rate) // codec.hop
    k = codec.quantizer.codebook_size
    streams = codec.quantizer.num_levels * codec.quantizer.num_groups
    codes = np.random.default_rng(0).integers(0, k, (1, frames, streams), dtype=np.int32)
    decode = jax.jit(lambda v, c: codec.apply(v, c, method="decode"))
    decode(variables, jnp.asarray(codes)).block_until_ready()

    def offline() -> float:
        t = time.perf_counter()
        decode(variables, jnp.asarray(codes)).block_until_ready()
        return time.perf_counter() - t

    out = {"frames": frames, "rounds": rounds, "chunks": {}}
    offline_all = []
    for n in chunks:
        stream = DecodeStream(codec, variables, chunk_frames=n)
        t = time.perf_counter()
        stream.push(codes[:, :n])  # compiles
        compile_s = time.perf_counter() - t
        pushes, ratios, totals = [], [], []
        for _ in range(rounds):  # offline and streaming alternate: the machine's speed drifts
            offline_s = offline()
            offline_all.append(offline_s)
            stream = DecodeStream(codec, variables, chunk_frames=n)
            times = []
            for i in range(0, frames, n):
                t = time.perf_counter()
                stream.push(codes[:, i : i + n])
                times.append(time.perf_counter() - t)
            pushes += times
            totals.append(sum(times))
            ratios.append(sum(times) / offline_s)
        pushes = np.array(pushes)
        out["chunks"][str(n)] = {
            "push_ms_median": round(float(np.median(pushes)) * 1e3, 2),
            "push_ms_p99": round(float(np.percentile(pushes, 99)) * 1e3, 2),
            "push_ms_max": round(float(pushes.max()) * 1e3, 2),
            "compile_s": round(compile_s, 2),
            "rtf": round(statistics.median(totals) / (frames * codec.hop / sample_rate), 4),
            "compute_ratio": round(statistics.median(ratios), 3),
            "compute_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "algorithmic_latency_ms": round(
                streaming.algorithmic_latency(codec, sample_rate, n) * 1e3, 1
            ),
        }
    # A server's case: many streams in one program at 1-frame chunks, against offline decodes.
    many = np.concatenate([codes] * batch)
    stream = DecodeStream(codec, variables, batch=batch, chunk_frames=1)
    stream.push(many[:, :1])  # compiles
    offline_s = offline()
    offline_all.append(offline_s)
    stream = DecodeStream(codec, variables, batch=batch, chunk_frames=1)
    times = []
    for i in range(frames):
        t = time.perf_counter()
        stream.push(many[:, i : i + 1])
        times.append(time.perf_counter() - t)
    times = np.array(times)
    out[f"batch{batch}_chunk1"] = {
        "push_ms_median": round(float(np.median(times)) * 1e3, 2),
        "push_ms_p99": round(float(np.percentile(times, 99)) * 1e3, 2),
        f"compute_ratio_vs_{batch}_offline": round(float(times.sum()) / (batch * offline_s), 3),
    }
    out["offline_decode_s_median"] = round(statistics.median(offline_all), 4)
    out["offline_rtf"] = round(
        out["offline_decode_s_median"] / (frames * codec.hop / sample_rate), 4
    )
    return out


def speech_path() -> str:
    hits = []
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "codec2-examples"], capture_output=True, text=True, check=False
        ).stdout
        hits = [p for p in listing.splitlines() if p.endswith("speech_orig_16k.wav")]
    except OSError:
        pass
    hits += glob.glob("/usr/share/codec2/**/speech_orig_16k.wav", recursive=True)
    if not hits:
        raise SystemExit("speech_orig_16k.wav not found: apt-get install codec2-examples, or --wav")
    return hits[0]


def tradeoff(wav_path: str, model: str | None) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from hificodec_jax.audio.audio_io import read_audio, resample
    from hificodec_jax.models import streaming
    from hificodec_jax.models.decode_stream import DecodeStream

    codec, variables, sample_rate = _setup(model)
    wav, sr = read_audio(wav_path)
    wav = resample(wav, sr, sample_rate)
    codes = np.asarray(codec.apply(variables, jnp.asarray(wav)[None], method="encode"))
    whole = np.asarray(codec.apply(variables, jnp.asarray(codes), method="decode"))[0]
    exact = streaming.exact_lookahead_frames(codec)
    rows = []
    for look in (0, 2, 4, 8, exact):
        stream = DecodeStream(codec, variables, chunk_frames=1, lookahead_frames=look)
        pcm = [stream.push(codes[:, i : i + 1]) for i in range(codes.shape[1])]
        got = np.concatenate([*pcm, stream.flush()], axis=1)[0]
        err = got - whole
        snr = 10 * np.log10(np.sum(whole**2) / max(float(np.sum(err**2)), 1e-30))
        rows.append(
            {
                "lookahead_frames": look,
                "exact": stream.exact,
                "latency_ms": round(
                    streaming.algorithmic_latency(codec, sample_rate, 1, look) * 1e3
                ),
                "snr_db": round(float(snr), 1),
                "max_abs_err": float(f"{np.abs(err).max():.3g}"),
                "rms_whole": float(f"{np.sqrt(np.mean(whole**2)):.3g}"),
            }
        )
    return {
        "config": model or "configs/grvq4.py",
        "weights": f"loaded ({model})" if model else WEIGHTS,
        "audio": os.path.basename(wav_path),
        "frames": int(codes.shape[1]),
        "chunk_frames": 1,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tradeoff", action="store_true")
    ap.add_argument("--wav", default=None)
    ap.add_argument("--model", default=None, help="--tradeoff with a model (name or directory)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.seconds, args.rounds)))
        return
    if args.tradeoff:
        print(json.dumps(tradeoff(args.wav or speech_path(), args.model)))
        return
    result = {"config": "configs/grvq4.py", "weights": WEIGHTS, "seconds": args.seconds}
    result["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
    for name, flags in (("one_thread", ONE_THREAD), ("machine", "")):
        env = dict(os.environ)
        env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), flags]))
        env.setdefault("JAX_PLATFORMS", "cpu")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--seconds",
            str(args.seconds),
        ]
        cmd += ["--rounds", str(args.rounds)]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{name} worker failed ({proc.returncode})")
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cpus"] = os.cpu_count()
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
