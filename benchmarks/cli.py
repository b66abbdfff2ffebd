"""First and cached ``hificodec-jax`` calls: the wall time of encode, decode and roundtrip of a
3 s clip, each run twice as a fresh process with the same compilation cache.

Run: python benchmarks/cli.py [--model DIR] [--seconds 3]
Without ``--model`` a model directory of the tiny config (random weights) is written first
(``--config configs/grvq4.py`` for the released architecture). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hificodec_jax
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.models.layers import param_init_key


def _model(config_path: str, directory: str) -> str:
    config = hificodec_jax.load_config(config_path)
    codec = hificodec_jax.build_codec(config)
    wav = jax.numpy.zeros((1, codec.hop * 8), jax.numpy.float32)
    variables = jax.jit(codec.init)(param_init_key(jax.random.key(0)), wav)
    return hificodec_jax.save_model(directory, config, variables, source="benchmark")


def _timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "hificodec_jax.cli", *argv, "--overwrite", "--no-progress"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model directory or released name")
    p.add_argument("--config", default="configs/tiny.py", help="config of the written model")
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _model(args.config, os.path.join(tmp, "model"))
        rate = hificodec_jax.load_config(model).audio.sample_rate
        wav = os.path.join(tmp, "clip.wav")
        sf.write(wav, synthetic_speech(rate, args.seconds), rate)
        env = {**os.environ, "HIFICODEC_JAX_CACHE": os.path.join(tmp, "cache")}
        hfc, out = os.path.join(tmp, "clip.hfc"), os.path.join(tmp, "out.wav")
        jobs = {
            "encode": ["encode", wav, "--model", model, "--out", hfc],
            "decode": ["decode", hfc, "--model", model, "--out", out],
            "roundtrip": ["roundtrip", wav, "--model", model, "--out", out],
        }
        result = {"model": args.model or args.config, "seconds": args.seconds}
        for name, argv in jobs.items():
            first, cached = _timed(argv, env), _timed(argv, env)
            result[f"{name}_first_s"] = round(first, 2)
            result[f"{name}_cached_s"] = round(cached, 2)
        result["cpu_count"] = os.cpu_count()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
