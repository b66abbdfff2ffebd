"""Compile the trainer's and the codec's programs for a target chip, on any host, and report.

:func:`compile_job` builds exactly the program a job runs on the target (the train step from
:func:`hificodec_jax.training.compilation.build` on the trainer's ``(data, fsdp)`` mesh, with its
shardings, FSDP setting, donation and compiler options; or the codec's encode / decode /
encode+decode with the variables replicated and the batch split over the chips), lowers it on
shape structs, compiles it with the target's compiler and returns a :class:`Report`: per-chip
memory against the chip's HBM, FLOPs, compile time, the program's form and, on TPU, the
compiler's own time estimates. :func:`max_batch` finds the largest batch per chip that fits.

Estimates, not measurements: on TPU ``priced`` is the compiler's cost model (per op the largest
of FLOPs at the chip's peak, bytes at its HBM bandwidth and transcendentals at their rate,
summed; a ``while`` body counted once; it sees layout and memory traffic but not how well the
matrix units are filled, nor cross-chip transfers) and ``cycles`` is the sum of the compiled
program's per-op ``estimated_cycles`` (the compiler's cycle model, which does see compute
efficiency) over the chip's clock. GPU compilers give no estimate; the report's GPU
``compute_floor_s`` is our own FLOPs / bf16 peak, a lower bound on the step time, no more.
"""

from __future__ import annotations

import math
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections

from hificodec_jax.aot import targets as targets_lib
from hificodec_jax.aot.report import (
    Report,
    as_json_dict,
    cycles_by_scope,
    estimated_cycles,
    format_table,
    program_form,
    scope_seconds,
    unpriced_calls,
)

JOBS = ("train", "encode", "decode", "roundtrip")


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded shape structs."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _train_program(config, devices):
    from hificodec_jax.training import compilation, sharding

    mesh = sharding.make_mesh(devices, fsdp=config.mesh.fsdp)
    _, _, abstract, step = compilation.build(config, mesh)
    batch = compilation.batch_spec(config, mesh)
    seconds = config.data.segment_size / config.audio.sample_rate
    return step, (abstract, batch), batch, seconds


def _codec_program(config, devices, job: str, seconds: float):
    from hificodec_jax import factory
    from hificodec_jax.training import sharding

    codec = factory.build_codec(config, weight_norm=False)  # the inference form (folded norms)
    mesh = sharding.make_mesh(devices)
    data, repl = sharding.data_sharding(mesh), sharding.replicated(mesh)
    hop, b = int(codec.hop), config.batch_size
    frames = max(1, round(seconds * config.audio.sample_rate) // hop)
    wav_t = frames * hop
    variables = jax.eval_shape(
        codec.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4 * hop), jnp.float32)
    )
    variables = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), variables
    )

    def encode(v, wav, lengths):
        return codec.apply(v, wav, lengths, method="encode")

    def decode(v, codes, frame_lengths):
        return codec.apply(v, codes, frame_lengths, method="decode")

    def roundtrip(v, wav, lengths):
        return decode(v, encode(v, wav, lengths), lengths // hop)

    wav = jax.ShapeDtypeStruct((b, wav_t), jnp.float32, sharding=data)
    lengths = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data)
    if job == "decode":
        codes = jax.eval_shape(encode, variables, wav, lengths)
        batch = (
            jax.ShapeDtypeStruct(codes.shape, codes.dtype, sharding=data),
            jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data),
        )
        fn = decode
    else:
        batch = (wav, lengths)
        fn = encode if job == "encode" else roundtrip
    return jax.jit(fn), (variables, *batch), batch, frames * hop / config.audio.sample_rate


# ----------------------------------------------------------------------------------------------
# Reading the compiled program
# ----------------------------------------------------------------------------------------------


def _program(config, devices, job: str, seconds: float):
    """``(jitted fn, args, batch, seconds)`` of ``job`` on a mesh of ``devices``."""
    if job == "train":
        return _train_program(config, devices)
    return _codec_program(config, devices, job, seconds)


def _one_chip_lowered(config, devices, job: str, seconds: float, chips: int):
    """The job at its batch per chip, lowered for one of the target's devices: one chip's
    program (the same FLOPs per chip; the FSDP split does not change them)."""
    one = job_config(config, batch_size=config.batch_size // chips)
    one.mesh.fsdp = 1
    fn, args, _, _ = _program(one, devices[:1], job, seconds)
    return fn.lower(*args)


def _gpu_flops(lowered) -> float | None:
    """XLA's HLO cost analysis of a one-chip program before optimisation (the GPU compiler
    gives none); ``None`` where this jaxlib cannot run it. A program for several chips would
    not do, divided by their number: its parts that run per device
    (``sharding.on_own_rows``) already have one chip's shapes."""
    try:
        from jax._src.lib import _jax

        module = lowered.compiler_ir(dialect="hlo").as_hlo_module()
        cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
        return float(cost["flops"])
    except Exception:  # a private API: no figure rather than no report
        return None


# ----------------------------------------------------------------------------------------------
# Compiling a job
# ----------------------------------------------------------------------------------------------


def job_config(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    precision: str | None = None,
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the job's global batch and precision."""
    config = ml_collections.ConfigDict(config.to_dict())
    if batch_size is not None:
        config.batch_size = int(batch_size)
    if precision is not None:
        config.precision = precision
    return config


def compile_job(
    target: str,
    config: ml_collections.ConfigDict,
    job: str = "train",
    *,
    batch_size: int | None = None,
    seconds: float = 10.0,
    precision: str | None = None,
    capacity_bytes: int | None = None,
    compiler_options: dict | None = None,
    on_compiled=None,
) -> Report:
    """Compile ``job`` of ``config`` for ``target`` and report (see the module docstring).

    ``batch_size`` is global (default ``config.batch_size``) and must be a multiple of the
    target's chips; ``seconds`` is the clip length of the inference jobs (train: the config's
    segment); ``capacity_bytes`` replaces the chip's usable HBM (e.g. for tests);
    ``compiler_options`` are added to the program's own (e.g.
    ``{"xla_tpu_sliced_prefetch_max_slices": 0}``, whose absence leaves custom calls the TPU
    cost model cannot price); ``on_compiled`` is called with the compiled program (e.g. to
    read its HLO).
    """
    if job not in JOBS:
        raise ValueError(f"job must be one of {JOBS}, got {job!r}")
    tgt = targets_lib.get_target(target)
    config = job_config(config, batch_size=batch_size, precision=precision)
    b = config.batch_size
    if b < 1 or b % tgt.chips:
        raise ValueError(
            f"batch size {b} must be a positive multiple of {target}'s {tgt.chips} chips"
        )
    devices = targets_lib.devices(target)

    t = time.perf_counter()
    fn, args, batch, seconds = _program(config, devices, job, seconds)
    lowered = fn.lower(*args)
    lower_s = time.perf_counter() - t
    capacity = int(capacity_bytes) if capacity_bytes is not None else tgt.usable_bytes
    batch_bytes = _shard_bytes(batch)
    arg_bytes = _shard_bytes(args)
    common = {
        "target": target, "platform": tgt.platform, "chips": tgt.chips, "job": job,
        "precision": config.get("precision", "float32"), "batch": b,
        "batch_per_chip": b // tgt.chips, "seconds": round(seconds, 6),
        "capacity_bytes": capacity, "batch_bytes": batch_bytes, "lower_s": round(lower_s, 2),
        "flops": None, "flops_source": "", "bytes_accessed": None,
    }  # fmt: skip
    if arg_bytes > capacity:  # no compile can make it fit: say so at once
        return Report(
            **common, state_bytes=arg_bytes - batch_bytes, output_bytes=0, temp_bytes=0,
            code_bytes=0, total_bytes=arg_bytes, fits=False,
            headroom_bytes=capacity - arg_bytes, compile_s=0.0, compiled=False,
        )  # fmt: skip
    t = time.perf_counter()
    with warnings.catch_warnings():
        # A compile-only program cannot be read back from JAX's persistent compilation cache
        # (there is no device client to load it into): JAX warns, then compiles.
        warnings.filterwarnings("ignore", "Error reading persistent compilation cache entry")
        compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
    compile_s = time.perf_counter() - t
    hlo = compiled.as_text()
    if on_compiled is not None:
        on_compiled(compiled)

    mem = compiled.memory_analysis()
    state_bytes = max(0, mem.argument_size_in_bytes - batch_bytes)
    output_bytes = max(0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
    code_bytes = mem.generated_code_size_in_bytes
    total = mem.argument_size_in_bytes + output_bytes + mem.temp_size_in_bytes + code_bytes

    report = Report(
        **common, state_bytes=state_bytes, output_bytes=output_bytes,
        temp_bytes=mem.temp_size_in_bytes, code_bytes=code_bytes, total_bytes=total,
        fits=total <= capacity, headroom_bytes=capacity - total,
        compile_s=round(compile_s, 2), form=program_form(hlo),
    )  # fmt: skip
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
    if cost and "flops" in cost:
        report.flops = float(cost["flops"])
        report.bytes_accessed = float(cost.get("bytes accessed", 0.0))
        report.flops_source = "compiled program (per chip)"
    elif tgt.platform == "cuda":
        if tgt.chips > 1:
            lowered = _one_chip_lowered(config, devices, job, seconds, tgt.chips)
        report.flops = _gpu_flops(lowered)
        report.flops_source = "HLO cost analysis of one chip's program before optimisation"
    if tgt.platform == "tpu" and cost and "optimal_seconds" in cost:
        report.unpriced_calls = unpriced_calls(hlo)
        priced = float(cost["optimal_seconds"]) + report.unpriced_calls
        report.priced_s = priced if priced > 0 else None  # not recoverable: no figure
        report.cycles = estimated_cycles(hlo)
        report.cycles_s = report.cycles / tgt.clock_hz
        report.cycles_by_scope_s = scope_seconds(cycles_by_scope(hlo), tgt.clock_hz)
    if tgt.platform == "cuda" and report.flops:
        report.compute_floor_s = report.flops / tgt.bf16_flops
    audio = report.batch_per_chip * report.seconds
    for name, step_s in (("priced", report.priced_s), ("cycles", report.cycles_s)):
        if step_s and step_s > 0:
            report.audio_s_per_chip_s[name] = audio / step_s
            if report.flops and tgt.bf16_flops:
                report.mfu[name] = report.flops / (step_s * tgt.bf16_flops)
    return report


def max_batch(
    target: str,
    config: ml_collections.ConfigDict,
    job: str = "train",
    *,
    seconds: float = 10.0,
    precision: str | None = None,
    capacity_bytes: int | None = None,
    compiler_options: dict | None = None,
    limit: int = 1024,
    on_report=None,
    on_compiled=None,
) -> tuple[int, Report | None, Report | None]:
    """``(per_chip, fits, next)``: the largest power-of-two batch per chip (up to ``limit``)
    whose program fits, its report, and the report of twice that batch, which does not fit
    (``None`` when ``limit`` was reached). ``per_chip`` is 0 when even 1 does not fit.

    Powers of two because batch per chip changes the compiler's layouts (a batch that fits
    can be followed by a larger one that does too); ``on_report`` sees every report and
    ``on_compiled`` every compiled program.
    """
    tgt = targets_lib.get_target(target)
    best, best_report, per_chip = 0, None, 1
    while per_chip <= limit:
        report = compile_job(
            target,
            config,
            job,
            batch_size=per_chip * tgt.chips,
            seconds=seconds,
            precision=precision,
            capacity_bytes=capacity_bytes,
            compiler_options=compiler_options,
            on_compiled=on_compiled,
        )
        if on_report is not None:
            on_report(report)
        if not report.fits:
            return best, best_report, report
        best, best_report = per_chip, report
        per_chip *= 2
    return best, best_report, None


__all__ = [
    "JOBS",
    "Report",
    "as_json_dict",
    "compile_job",
    "format_table",
    "max_batch",
    "program_form",
]
