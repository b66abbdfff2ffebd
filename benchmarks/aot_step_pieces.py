"""The TPU compiler's cycle estimate of the grvq4 train step, piece by piece (ESTIMATES).

The whole step takes over an hour of CPU time and 24 GiB of host memory to compile for a TPU
(v5e-8, 16 per chip), so this compiles its pieces one at a time for one chip and sums them:

* ``gen``: the codec's training forward and its backward (``training.step.generator_forward``
  and its VJP) at ``B`` clips;
* ``mpd_i`` / ``msd_i`` / ``stft_i``: each sub-discriminator's forward and both gradients
  (parameters, as the D phase takes; input, as the G phase takes) on ``2B`` rows, the real and
  generated halves of a step.

Per piece: the sum of the compiled program's per-op ``estimated_cycles`` over the chip's clock
(the compiler's cycle model), FLOPs and compile time. The D and G phases each run a
sub-discriminator forward, so the pieces approximate one step to within a forward per unit;
they leave out the losses, the optimizer and the gradient all-reduce. Not a measurement.

    python benchmarks/aot_step_pieces.py [--target v5e-1] [--batch-per-chip 16] \\
        [--pieces gen,mpd,msd,stft] [--units 0] [--dump-dir DIR] [--xla-option KEY=VALUE]

Prints one JSON line: ``{"pieces": {name: {"ms", "gflop", "compile_s"}}, "total_ms", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hificodec_jax.aot import targets  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/grvq4.py")
    parser.add_argument("--target", default="v5e-1", help="a one-chip TPU target")
    parser.add_argument("--batch-per-chip", type=int, default=16)
    parser.add_argument("--precision", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--pieces", default="gen,mpd,msd,stft")
    parser.add_argument("--units", help="only these sub-discriminator indices, e.g. 0,2")
    parser.add_argument("--dump-dir", help="write each piece's optimized HLO here")
    parser.add_argument(
        "--xla-option", action="append", default=[], metavar="KEY=VALUE",
        help="a compiler option for every piece (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    targets.prepare_environment()
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from hificodec_jax import factory
    from hificodec_jax.aot.report import estimated_cycles
    from hificodec_jax.models import discriminators
    from hificodec_jax.training import step as train_step

    target = targets.get_target(args.target)
    if target.platform != "tpu" or target.chips != 1:
        parser.error("--target must be a one-chip TPU target (v5e-1, v6e-1, v4-1, v5p-1)")
    replicated = NamedSharding(Mesh(targets.devices(args.target), ("data",)), PartitionSpec())
    config = factory.load_config(args.config)
    config.precision = args.precision
    b, t = args.batch_per_chip, config.data.segment_size
    units = None if args.units is None else {int(u) for u in args.units.split(",")}
    results = {}
    options = dict(o.split("=", 1) for o in args.xla_option)

    def estimate(name, fn, *args_):
        specs = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), args_
        )
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*specs).compile(options or None)
        compile_s = time.perf_counter() - start
        hlo = compiled.as_text()
        cycles = estimated_cycles(hlo)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        results[name] = {
            "ms": round(1e3 * cycles / target.clock_hz, 3),
            "gflop": round(float(cost.get("flops", 0.0)) / 1e9, 1),
            "compile_s": round(compile_s, 1),
        }
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
        if args.dump_dir:
            os.makedirs(args.dump_dir, exist_ok=True)
            with open(os.path.join(args.dump_dir, f"{name}.hlo"), "w") as f:
                f.write(hlo)

    def zeros(tree):
        return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)

    pieces = args.pieces.split(",")
    if "gen" in pieces:
        codec = factory.build_codec(config, weight_norm=True)
        v = jax.eval_shape(lambda: codec.init(jax.random.key(0), jnp.zeros((1, 4 * codec.hop))))

        def generator(params, vq, wav):
            lengths = jnp.full((wav.shape[0],), wav.shape[1], jnp.int32)
            wav_hat, q_loss, g_vjp, _, vq_new = train_step.generator_forward(
                codec, params, vq, wav, lengths, jax.random.key(0)
            )
            return g_vjp((jnp.ones_like(wav_hat), jnp.ones_like(q_loss))), vq_new

        estimate("gen", generator, zeros(v["params"]), zeros(v.get("vq", {})), jnp.zeros((b, t)))
    discs = factory.build_discriminators(config)
    d_vars = jax.eval_shape(lambda: discs.init(jax.random.key(0), jnp.zeros((1, t))))
    for unit in discriminators.sub_discriminators(discs):
        if unit.family not in pieces or (units is not None and unit.index not in units):
            continue

        def d_unit(params, spectral, wav, unit=unit):
            def objective(params, wav):
                (logits, fmaps), _ = unit.apply(params, spectral, wav)
                leaves = jax.tree.leaves((logits, fmaps))
                return sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves)

            return jax.grad(objective, argnums=(0, 1))(params, wav)

        estimate(
            f"{unit.family}_{unit.index}",
            d_unit,
            zeros(unit.subtree(d_vars["params"])),
            zeros(unit.subtree(d_vars.get("spectral", {}))),
            jnp.zeros((2 * b, t)),
        )
    out = {
        "target": args.target,
        "batch_per_chip": b,
        "segment_s": t / config.audio.sample_rate,
        "precision": args.precision,
        "xla_options": options,
        "pieces": results,
        "total_ms": round(sum(r["ms"] for r in results.values()), 3),
        "note": "TPU compiler cycle-model estimates, not measurements",
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
