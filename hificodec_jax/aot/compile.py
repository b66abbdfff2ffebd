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

import dataclasses
import math
import re
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hificodec_jax.aot import targets as targets_lib

JOBS = ("train", "encode", "decode", "roundtrip")
# Custom calls the TPU cost model cannot price: each subtracts 1 s from ``optimal_seconds``.
_UNPRICED = re.compile(r'custom_call_target="(?:ConcatBitcast|X64\w*)"')


@dataclasses.dataclass
class Report:
    """What one compile of a job for a target says; bytes and FLOPs are per chip."""

    target: str
    platform: str
    chips: int
    job: str
    precision: str
    batch: int  # global
    batch_per_chip: int
    seconds: float  # audio per example
    capacity_bytes: int  # HBM the job may use per chip
    state_bytes: int  # parameters, optimizer and codebook state (inference: the variables)
    batch_bytes: int
    output_bytes: int  # outputs that do not reuse a donated input's memory
    temp_bytes: int
    code_bytes: int
    total_bytes: int
    fits: bool
    headroom_bytes: int
    lower_s: float
    compile_s: float
    flops: float | None  # per chip per call; None where the compiler gives none
    flops_source: str
    bytes_accessed: float | None
    priced_s: float | None = None  # TPU cost model, unpriced custom calls added back
    unpriced_calls: int = 0
    cycles: int | None = None
    cycles_s: float | None = None  # TPU cycle model / clock
    compute_floor_s: float | None = None  # GPU: our FLOPs / bf16 peak, a lower bound
    audio_s_per_chip_s: dict = dataclasses.field(default_factory=dict)  # per estimate
    mfu: dict = dataclasses.field(default_factory=dict)  # per estimate, vs bf16 peak
    form: dict = dataclasses.field(default_factory=dict)
    # False: the inputs alone exceed the capacity, so it was not compiled (``total_bytes`` is
    # then the inputs' size, a lower bound)
    compiled: bool = True
    estimate_note: str = "estimates from the compiler's cost models, not measurements"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# The programs
# ----------------------------------------------------------------------------------------------


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


def program_form(hlo: str) -> dict:
    """Counts that show the compiled program's form: loops, convolutions and their dtypes,
    cuDNN convolutions (GPU) and cross-chip collectives."""
    convs = re.findall(r"= (\w+)\[[^\]]*\]\S* convolution\((.*)$", hlo, re.M)
    cudnn = re.findall(
        r"= \((\w+)\[[^\n]*custom-call\([^\n]*custom_call_target=\"__cudnn\$conv", hlo
    )
    dtypes: dict[str, int] = {}
    for dtype in [d for d, _ in convs] + cudnn:
        dtypes[dtype] = dtypes.get(dtype, 0) + 1

    def ops(name):  # an async pair (-start / -done) counts once
        return len(re.findall(rf" {name}(?:-start)?\(", hlo))

    return {
        "while_loops": ops("while"),
        "convolutions": len(convs),
        "grouped_convolutions": sum("feature_group_count=" in rest for _, rest in convs),
        "strided_convolutions": sum(
            bool(re.search(r"window=\{[^}]*stride=\d*[2-9]", rest)) for _, rest in convs
        ),
        "cudnn_convolutions": len(cudnn),
        "conv_dtypes": dtypes,
        "collective_permutes": ops("collective-permute"),
        "all_to_alls": ops("all-to-all"),
        "all_reduces": ops("all-reduce"),
        "all_gathers": ops("all-gather"),
        "reduce_scatters": ops("reduce-scatter"),
    }


def _gpu_flops(lowered, chips: int) -> float | None:
    """XLA's HLO cost analysis of the program before optimisation (the GPU compiler gives
    none), split evenly over the chips; ``None`` where this jaxlib cannot run it."""
    try:
        from jax._src.lib import _jax

        module = lowered.compiler_ir(dialect="hlo").as_hlo_module()
        cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
        return float(cost["flops"]) / chips
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
    if job == "train":
        fn, args, batch, seconds = _train_program(config, devices)
    else:
        fn, args, batch, seconds = _codec_program(config, devices, job, seconds)
    lowered = fn.lower(*args)
    lower_s = time.perf_counter() - t
    capacity = int(capacity_bytes) if capacity_bytes is not None else tgt.usable_bytes
    batch_bytes = _shard_bytes(batch)
    arg_bytes = _shard_bytes(args)
    if arg_bytes > capacity:  # no compile can make it fit: say so at once
        return Report(
            target=target,
            platform=tgt.platform,
            chips=tgt.chips,
            job=job,
            precision=config.get("precision", "float32"),
            batch=b,
            batch_per_chip=b // tgt.chips,
            seconds=round(seconds, 6),
            capacity_bytes=capacity,
            state_bytes=arg_bytes - batch_bytes,
            batch_bytes=batch_bytes,
            output_bytes=0,
            temp_bytes=0,
            code_bytes=0,
            total_bytes=arg_bytes,
            fits=False,
            headroom_bytes=capacity - arg_bytes,
            lower_s=round(lower_s, 2),
            compile_s=0.0,
            flops=None,
            flops_source="",
            bytes_accessed=None,
            compiled=False,
        )
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
        target=target,
        platform=tgt.platform,
        chips=tgt.chips,
        job=job,
        precision=config.get("precision", "float32"),
        batch=b,
        batch_per_chip=b // tgt.chips,
        seconds=round(seconds, 6),
        capacity_bytes=capacity,
        state_bytes=state_bytes,
        batch_bytes=batch_bytes,
        output_bytes=output_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        code_bytes=code_bytes,
        total_bytes=total,
        fits=total <= capacity,
        headroom_bytes=capacity - total,
        lower_s=round(lower_s, 2),
        compile_s=round(compile_s, 2),
        flops=None,
        flops_source="",
        bytes_accessed=None,
        form=program_form(hlo),
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
    if cost and "flops" in cost:
        report.flops = float(cost["flops"])
        report.bytes_accessed = float(cost.get("bytes accessed", 0.0))
        report.flops_source = "compiled program (per chip)"
    elif tgt.platform == "cuda":
        report.flops = _gpu_flops(lowered, tgt.chips)
        report.flops_source = "HLO cost analysis before optimisation / chips"
    if tgt.platform == "tpu" and cost and "optimal_seconds" in cost:
        report.unpriced_calls = len(_UNPRICED.findall(hlo))
        report.priced_s = float(cost["optimal_seconds"]) + report.unpriced_calls
        report.cycles = sum(map(int, re.findall(r'"estimated_cycles":"(\d+)"', hlo)))
        report.cycles_s = report.cycles / tgt.clock_hz
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
) -> tuple[int, Report | None, Report | None]:
    """``(per_chip, fits, next)``: the largest power-of-two batch per chip (up to ``limit``)
    whose program fits, its report, and the report of twice that batch, which does not fit
    (``None`` when ``limit`` was reached). ``per_chip`` is 0 when even 1 does not fit.

    Powers of two because batch per chip changes the compiler's layouts (a batch that fits
    can be followed by a larger one that does too); ``on_report`` sees every report.
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
        )
        if on_report is not None:
            on_report(report)
        if not report.fits:
            return best, best_report, report
        best, best_report = per_chip, report
        per_chip *= 2
    return best, best_report, None


def format_table(report: Report) -> str:
    """A short human-readable table of a report."""
    gib = 1024**3

    def g(x):
        return f"{x / gib:8.3f} GiB"

    lines = [
        f"{report.job} for {report.target} ({report.chips} x {report.platform}), "
        f"{report.precision}, batch {report.batch} ({report.batch_per_chip} per chip) x "
        f"{report.seconds:g} s",
        f"  state        {g(report.state_bytes)} per chip",
        f"  batch        {g(report.batch_bytes)}",
        f"  outputs      {g(report.output_bytes)}",
        f"  temporaries  {g(report.temp_bytes)}",
        f"  code         {g(report.code_bytes)}",
        f"  total        {g(report.total_bytes)} of {report.capacity_bytes / gib:.2f} GiB: "
        + ("fits" if report.fits else "DOES NOT FIT")
        + f", headroom {report.headroom_bytes / gib:.2f} GiB",
        f"  compile      {report.compile_s:.1f} s (lowering {report.lower_s:.1f} s)"
        + ("" if report.compiled else ": not compiled, the inputs alone exceed the capacity"),
    ]
    if report.flops is not None:
        lines.append(
            f"  FLOPs        {report.flops / 1e9:.2f} GFLOP per chip ({report.flops_source})"
        )
    if report.compute_floor_s is not None:
        lines.append(
            f"  compute floor {1e3 * report.compute_floor_s:.3f} ms per step (FLOPs at the bf16 "
            "peak: a lower bound, not an estimate)"
        )
    for name, step_s in (("priced", report.priced_s), ("cycles", report.cycles_s)):
        if step_s is not None:
            extra = ""
            if name in report.audio_s_per_chip_s:
                extra = f", {report.audio_s_per_chip_s[name]:.1f} audio s per chip-s"
            if name in report.mfu:
                extra += f", MFU {100 * report.mfu[name]:.1f} %"
            lines.append(f"  ESTIMATE {name:8s} {1e3 * step_s:.2f} ms per step{extra}")
    f = report.form
    if not f:
        return "\n".join(lines)
    lines.append(
        f"  form         {f['while_loops']} while, {f['convolutions']} conv "
        f"({f['grouped_convolutions']} grouped, {f['strided_convolutions']} strided), "
        f"{f['cudnn_convolutions']} cuDNN conv, conv dtypes {f['conv_dtypes']}, "
        f"{f['collective_permutes']} collective-permute, {f['all_to_alls']} all-to-all, "
        f"{f['all_reduces']} all-reduce"
    )
    return "\n".join(lines)


def as_json_dict(report: Report) -> dict:
    """The report as JSON-ready values (floats rounded)."""

    def clean(x):
        if isinstance(x, float):
            return float(np.format_float_positional(x, precision=6, unique=True, fractional=False))
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return x

    return {k: clean(v) for k, v in report.as_dict().items()}


__all__ = [
    "JOBS",
    "Report",
    "as_json_dict",
    "compile_job",
    "format_table",
    "max_batch",
    "program_form",
]
