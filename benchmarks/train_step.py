"""Train-step benchmark: configs/grvq4.py, batch 4 x 16000 samples, MPD + MSD + MS-STFT.

Prints progress lines, then one JSON object as the last line: step_s_median, compile_s,
audio_s_per_s, peak_rss_mib, probe_gflops (2048^2 fp32 matmul in the same run), and the split
g_forward_s (generator forward alone), d_step_s (discriminator forward + backward on real and
fake, all families), g_step_s (the rest: D on the fake again, backward through D and the
generator, both optimizers), plus gflop/probe_fraction from XLA's cost analysis.
The PyTorch reference needs 41.5 s per such step with a 7.4 GiB peak on this machine class.

Run: python benchmarks/train_step.py [--repeats 3] [--batch 4] [--families mpd,msd,stft]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference import cost_gflop, matmul_probe, rss_mib  # noqa: E402

import hificodec_jax  # noqa: E402
import hificodec_jax.factory  # noqa: E402
from hificodec_jax import sharding  # noqa: E402
from hificodec_jax.demo_audio import synthetic_speech  # noqa: E402
from hificodec_jax.train import build  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "grvq4.py"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--segment", type=int, default=16000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--families", default="mpd,msd,stft")
    args = p.parse_args(argv)

    config = hificodec_jax.load_config(args.config)
    config.disc.families = tuple(args.families.split(","))
    config.data.segment_size = args.segment
    sr = config.audio.sample_rate
    mesh = sharding.make_mesh(jax.devices()[:1])
    codec, init, abstract, step = build(config, mesh)
    wav = np.stack([synthetic_speech(sr, args.segment / sr, seed=i) for i in range(args.batch)])
    batch = {"wav": wav, "lengths": np.full((args.batch,), args.segment, np.int32)}
    batch = sharding.shard_batch(batch, mesh)
    t = time.perf_counter()
    state = init(jax.random.key(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    gflop = cost_gflop(compiled)
    print(f"init {init_s:.1f} s, compile {compile_s:.1f} s, {gflop:.0f} GFLOP", file=sys.stderr)

    g_fwd = jax.jit(lambda p, v, w: codec.apply({"params": p, "vq": v}, w).wav_hat)
    wav_hat = g_fwd(state.g_params, state.vq, batch["wav"]).block_until_ready()
    # The D phase alone: forward + backward of all families on real and fake (what the step's
    # D update costs, minus the optimizer); the G phase is the rest of the step.
    discs = hificodec_jax.factory.build_discriminators(config)

    def d_phase(d_params, spectral, x):
        def objective(p):
            out, _ = discs.apply(
                {"params": p, "spectral": spectral}, x, update_stats=True, mutable=["spectral"]
            )
            return sum(jnp.mean(jnp.square(y)) for y in jax.tree.leaves(out))

        return jax.value_and_grad(objective)(d_params)

    d_phase = jax.jit(d_phase)
    d_in = jnp.concatenate([batch["wav"][:, : wav_hat.shape[1]], wav_hat])
    jax.block_until_ready(d_phase(state.d_params, state.spectral, d_in))
    state, _ = compiled(state, batch)  # warm-up
    probe = matmul_probe()
    times, fwd_times, d_times = [], [], []
    for i in range(args.repeats):
        t = time.perf_counter()
        g_fwd(state.g_params, state.vq, batch["wav"]).block_until_ready()
        fwd_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(d_phase(state.d_params, state.spectral, d_in))
        d_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
        print(f"step {i}: {times[-1]:.2f} s (g forward {fwd_times[-1]:.2f} s)", file=sys.stderr)
    med = statistics.median(times)
    result = {
        "config": os.path.relpath(args.config, REPO),
        "batch": args.batch,
        "segment": args.segment,
        "families": args.families,
        "step_s_median": round(med, 3),
        "g_forward_s": round(statistics.median(fwd_times), 3),
        "d_step_s": round(statistics.median(d_times), 3),
        "g_step_s": round(med - statistics.median(fwd_times) - statistics.median(d_times), 3),
        "compile_s": round(compile_s, 1),
        "init_s": round(init_s, 1),
        "audio_s_per_s": round(args.batch * args.segment / sr / med, 3),
        "peak_rss_mib": round(rss_mib(), 1),
        "probe_gflops": round(probe, 1),
        "gflop": round(gflop, 1),
        "probe_fraction": round(gflop / med / probe, 3),
        "reference_step_s": 41.5,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
