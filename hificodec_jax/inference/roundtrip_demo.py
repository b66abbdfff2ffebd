"""A smoke check of a config's codec: an encode/decode round trip of a demo signal.

``python -m hificodec_jax.inference.roundtrip_demo configs/grvq4.py [WORKDIR]``.

Builds the config's codec with freshly initialised (untrained) weights, encodes a synthetic
speech-like signal to codes and decodes it, and writes ``input.wav``, ``output.wav`` and
``codes.npy`` into the workdir with a summary (bitrate, code usage, timings). With random weights
the output is not the input: the job checks the pipeline end to end, not quality.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
import soundfile as sf
from absl import logging

from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.factory import build_codec
from hificodec_jax.models.layers import param_init_key


def run(config: ml_collections.ConfigDict, workdir: str, seconds: float = 3.0) -> dict:
    """Round trip ``seconds`` of demo audio; returns (and writes) the summary dict."""
    os.makedirs(workdir, exist_ok=True)
    sr = config.audio.sample_rate
    codec = build_codec(config)
    wav = synthetic_speech(sr, seconds)[None]
    t0 = time.perf_counter()
    variables = jax.jit(codec.init)(
        param_init_key(jax.random.key(config.seed)), wav[:, : codec.hop]
    )
    t1 = time.perf_counter()
    codes = jax.jit(lambda v, x: codec.apply(v, x, method="encode"))(variables, wav)
    wav_hat = jax.jit(lambda v, c: codec.apply(v, c, method="decode"))(variables, codes)
    wav_hat, codes = np.asarray(wav_hat), np.asarray(codes)
    t2 = time.perf_counter()
    sf.write(os.path.join(workdir, "input.wav"), wav[0], sr)
    sf.write(os.path.join(workdir, "output.wav"), wav_hat[0], sr)
    np.save(os.path.join(workdir, "codes.npy"), codes[0])
    summary = {
        "sample_rate": sr,
        "hop": codec.hop,
        "seconds": seconds,
        "codes_shape": list(codes.shape),
        "bitrate_bps": codec.bitrate(sr),
        "distinct_codes_per_stream": [int(len(np.unique(c))) for c in codes[0].T],
        "init_s": round(t1 - t0, 2),
        "encode_decode_s": round(t2 - t1, 2),
        "output_samples": int(wav_hat.shape[-1]),
        "untrained_weights": True,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    logging.info("round trip done: %s", summary)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    import sys

    from hificodec_jax.factory import load_config

    run(load_config(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "runs/roundtrip")
