"""Train-step benchmark: configs/grvq4.py, batch 4 x 16000 samples, MPD + MSD + MS-STFT.

The process does what ``hificodec_jax.training.loop`` does before its loop (compile the step ahead of
time from the abstract state, create the state, return freed compiler memory to the OS), then
times ``--repeats`` steps after one warm-up step. ``peak_rss_mib`` is the process's peak
resident memory at that point: compile, init and the steps, nothing else (the split below is
measured afterwards). Prints progress lines, then one JSON object as the last line:

* ``step_s_median``, ``compile_s`` (the step and the state initialiser compiled together, as
  training does: wall time), ``compile_step_s`` / ``compile_init_s`` (each program's own
  compile wall time within that, the two compiled concurrently), ``init_s`` (running the
  initialiser), ``audio_s_per_s``, ``peak_rss_mib``, ``xla_temp_mib`` / ``state_mib``
  (XLA's buffer assignment of the step: temporaries and the train state), ``probe_gflops``
  (2048^2 fp32 matmul in the same run, just before timing), ``gflop`` / ``probe_fraction``
  (XLA's FLOP count of the step, see :func:`step_gflop`, over the probe's rate);
* the split: ``g_forward_s`` (generator forward), ``d_step_s`` (the step's own D-phase code:
  forward and parameter gradients of every sub-discriminator on real + fake, no optimizer),
  ``g_step_s`` (the rest: D on real + fake again with input gradients only, mel losses,
  backward through the generator, both optimizer updates).

The ``spec_reference_*`` fields repeat the spec's figure for the PyTorch reference
(reference.md section 11); the machines' speed swings, so compare with a torch run adjacent to
this one (measured figures: ``benchmarks/RESULTS.md``).

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
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference import cost_gflop, matmul_probe

import hificodec_jax
from hificodec_jax import factory
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.models.discriminators import sub_discriminators
from hificodec_jax.training import compilation as train
from hificodec_jax.training import host_memory, losses, sharding
from hificodec_jax.training.step import discriminator_gradients, real_and_fake

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def step_gflop(config, mesh) -> float:
    """The step's FLOP count by XLA's cost analysis, in GFLOP.

    XLA counts a loop's body once, and MSD's grouped convs run in loops over their groups
    (``models/grouped_conv.py``), so the count is taken from the same step lowered with XLA's
    own grouped convolution (``disc.split_groups=False``: the same arithmetic, no loops), before
    optimisation.
    """
    config = config.copy_and_resolve_references()
    config.disc.split_groups = False
    _, _, abstract, step = train.build(config, mesh)
    return cost_gflop(step.lower(abstract, train.batch_spec(config, mesh)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "grvq4.py"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--segment", type=int, default=16000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--families", default="mpd,msd,stft")
    p.add_argument(
        "--reuse-real-features",
        action="store_true",
        help="config.loss.reuse_real_features (not the reference objective)",
    )
    args = p.parse_args(argv)

    config = hificodec_jax.load_config(args.config)
    config.disc.families = tuple(args.families.split(","))
    config.data.segment_size = args.segment
    config.batch_size = args.batch
    config.loss.reuse_real_features = args.reuse_real_features
    sr = config.audio.sample_rate
    mesh = sharding.make_mesh(jax.devices()[:1])
    codec, init, abstract, step = train.build(config, mesh)

    t, compile_times = time.perf_counter(), {}
    compiled, init = train.compile_step(
        step, abstract, config, mesh, init=init, timings=compile_times
    )
    compile_s = time.perf_counter() - t
    gflop = step_gflop(config, mesh)
    mem = compiled.memory_analysis()
    print(
        f"compile (step + init) {compile_s:.1f} s (concurrently: step "
        f"{compile_times['step']:.1f} s, init {compile_times['init']:.1f} s), {gflop:.0f} GFLOP",
        file=sys.stderr,
    )
    t = time.perf_counter()
    state = jax.block_until_ready(init(jax.random.key(0)))
    init_s = time.perf_counter() - t
    host_memory.release_freed_memory()
    print(f"init {init_s:.1f} s", file=sys.stderr)

    wav = np.stack([synthetic_speech(sr, args.segment / sr, seed=i) for i in range(args.batch)])
    batch = {"wav": wav, "lengths": np.full((args.batch,), args.segment, np.int32)}
    batch = sharding.shard_batch(batch, mesh)
    state, _ = compiled(state, batch)  # warm-up
    probe = matmul_probe()
    times = []
    for i in range(args.repeats):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
        print(f"step {i}: {times[-1]:.2f} s", file=sys.stderr)
    med = statistics.median(times)
    peak_rss = host_memory.peak_rss_mib()

    # The split, after the peak was read: the generator forward, and the step's D-phase code.
    g_fwd = jax.jit(lambda p, v, w: codec.apply({"params": p, "vq": v}, w).wav_hat)
    wav_hat = jax.block_until_ready(g_fwd(state.g_params, state.vq, batch["wav"]))
    units = sub_discriminators(factory.build_discriminators(config))
    d_phase = jax.jit(  # with the step's compiler options, as in the step
        lambda p, s, x: discriminator_gradients(units, p, s, x, losses.lsgan_discriminator_loss),
        compiler_options=train.step_compiler_options() or None,
    )
    d_in = real_and_fake(batch["wav"][:, : wav_hat.shape[1]], wav_hat)
    jax.block_until_ready(d_phase(state.d_params, state.spectral, d_in))
    fwd_s = _median_time(lambda: g_fwd(state.g_params, state.vq, batch["wav"]), args.repeats)
    d_s = _median_time(lambda: d_phase(state.d_params, state.spectral, d_in), args.repeats)
    result = {
        "config": os.path.relpath(args.config, REPO),
        "batch": args.batch,
        "segment": args.segment,
        "families": args.families,
        "reuse_real_features": args.reuse_real_features,
        "step_s_median": round(med, 3),
        "step_s_all": [round(x, 3) for x in times],
        "g_forward_s": round(fwd_s, 3),
        "d_step_s": round(d_s, 3),
        "g_step_s": round(med - fwd_s - d_s, 3),
        "compile_s": round(compile_s, 1),
        "compile_step_s": round(compile_times["step"], 1),
        "compile_init_s": round(compile_times["init"], 1),
        "init_s": round(init_s, 1),
        "audio_s_per_s": round(args.batch * args.segment / sr / med, 3),
        "peak_rss_mib": round(peak_rss, 1),
        "xla_temp_mib": round(mem.temp_size_in_bytes / 2**20, 1),
        "state_mib": round(mem.argument_size_in_bytes / 2**20, 1),
        "probe_gflops": round(probe, 1),
        "gflop": round(gflop, 1),
        "probe_fraction": round(gflop / med / probe, 3),
        "spec_reference_step_s": 41.5,  # reference.md section 11's figure
        "spec_reference_peak_rss_mib": 7588,  # reference.md's 7.4 GiB
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
