"""The report of an ahead-of-time compile (:mod:`hificodec_jax.aot.compile`): per-chip memory,
FLOPs, the compiler's labelled estimates and the program's form, as a table and as JSON."""

from __future__ import annotations

import dataclasses
import re

import numpy as np


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
    # TPU: the cycle model's seconds by module, {scope: [forward, backward]} (scope_seconds)
    cycles_by_scope_s: dict = dataclasses.field(default_factory=dict)
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

    def ops(name):
        # An async pair (-start / -done) counts once, and so does a collective the TPU compiler
        # has copied into several async fusions to overlap it with compute (one channel id).
        lines = re.findall(rf"^.* {name}(?:-start)?\(.*$", hlo, re.M)
        channels = {m.group(1) for line in lines if (m := re.search(r"channel_id=(\d+)", line))}
        return len(channels) + sum("channel_id=" not in line for line in lines)

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


# Custom calls the TPU cost model cannot price: each one in the entry computation subtracts 1 s
# from ``optimal_seconds`` (those inside conditional branches are not charged: checked on the
# grvq4 train step, whose 591 entry calls account for the whole offset and 106 in branches for
# none of it).
_UNPRICED = re.compile(r'custom_call_target="(?:ConcatBitcast|X64\w*)"')


def unpriced_calls(hlo: str) -> int:
    """The custom calls in a compiled TPU program's entry computation that its cost model
    charges 1 s each instead of pricing them."""
    entry = re.search(r"^ENTRY .*?^\}", hlo, re.M | re.S)
    return len(_UNPRICED.findall(entry.group(0) if entry else hlo))


_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')


def estimated_cycles(hlo: str) -> int:
    """The sum of a compiled TPU program's per-op ``estimated_cycles`` (the compiler's cycle
    model; divide by the chip's clock for seconds)."""
    return sum(map(int, _CYCLES.findall(hlo)))


_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Function transforms and control flow in a jax op name: not a module of the program.
_WRAPPER = re.compile(r"^(?:jit|jvp|transpose|vmap|remat|checkpoint|pjit|shard_map)\((.*)\)$")
_CONTROL = re.compile(
    r"^(?:cond|while|body|cond_fun|body_fun|closed_call|branch_\d+_fun|shard_map|jit\(.*\))$"
)


def op_scope(op_name: str, depth: int = 1) -> tuple[str, bool]:
    """``(scope, backward)`` of a jax op name: its first ``depth`` module names (transforms
    such as ``jvp(...)`` unwrapped, control flow skipped; ``"(top level)"`` for ops outside any
    module) and whether it is in a transposed (backward) computation."""
    parts = op_name.split("/")[1:-1]  # drop the program (jit(step)) and the primitive
    names = []
    for part in parts:
        while m := _WRAPPER.match(part):
            part = m.group(1)
        if part and not _CONTROL.match(part):
            names.append(part)
    return "/".join(names[:depth]) or "(top level)", "transpose(" in op_name


def cycles_by_scope(hlo: str, depth: int = 1) -> dict[str, tuple[int, int]]:
    """A compiled TPU program's estimated cycles by :func:`op_scope`: ``{scope: (forward,
    backward)}``, largest first; ops without a jax name (the compiler's own copies) under
    ``"(unnamed)"``."""
    sums: dict[str, list[int]] = {}
    for line in hlo.splitlines():
        if not (c := _CYCLES.search(line)):
            continue
        name = _OP_NAME.search(line)
        scope, backward = op_scope(name.group(1), depth) if name else ("(unnamed)", False)
        sums.setdefault(scope, [0, 0])[backward] += int(c.group(1))
    order = sorted(sums.items(), key=lambda kv: -sum(kv[1]))
    return {k: (f, b) for k, (f, b) in order}


def scope_seconds(by_scope: dict[str, tuple[int, int]], clock_hz: float, top: int = 12) -> dict:
    """The ``top`` scopes of :func:`cycles_by_scope` in seconds (``[forward, backward]``), the
    rest summed under ``"(rest)"``."""
    items = list(by_scope.items())
    out = {k: [f / clock_hz, b / clock_hz] for k, (f, b) in items[:top]}
    if rest := items[top:]:
        out["(rest)"] = [
            sum(f for _, (f, _) in rest) / clock_hz,
            sum(b for _, (_, b) in rest) / clock_hz,
        ]
    return out


def format_breakdown(by_scope_s: dict[str, list[float]]) -> str:
    """:func:`scope_seconds` as a table (the cycle model: an estimate)."""
    total = sum(f + b for f, b in by_scope_s.values()) or 1.0
    lines = [f"  {'ESTIMATE cycles by scope':40s} {'fwd ms':>9s} {'bwd ms':>9s} {'share':>6s}"]
    for scope, (f, b) in by_scope_s.items():
        lines.append(f"  {scope[:40]:40s} {1e3 * f:9.2f} {1e3 * b:9.2f} {(f + b) / total:6.1%}")
    return "\n".join(lines)


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
    if report.cycles_by_scope_s:
        lines.append(format_breakdown(report.cycles_by_scope_s))
    return "\n".join(lines)


def as_json_dict(report: Report) -> dict:
    """The report as JSON-ready values (floats rounded)."""

    def clean(x):
        if isinstance(x, float):
            return float(np.format_float_positional(x, precision=6, unique=True, fractional=False))
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return {k: clean(v) for k, v in report.as_dict().items()}


def main(argv=None) -> None:
    """``python -m hificodec_jax.aot.report DUMP.hlo [--target v5e-8] [--depth 2] [--top 20]``:
    where a dumped TPU program's estimated cycles go (``hificodec-jax compile --dump-hlo``)."""
    import argparse

    from hificodec_jax.aot import targets

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    parser.add_argument("hlo", help="optimized HLO text of a compiled TPU program")
    parser.add_argument("--target", default="v5e-8", help="the TPU target it was compiled for")
    parser.add_argument("--depth", type=int, default=1, help="module names per scope")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        clock = targets.get_target(args.target).clock_hz
    except ValueError as e:
        parser.error(str(e))
    if not clock:
        parser.error(f"--target {args.target} has no cycle model (TPU targets only)")
    try:
        with open(args.hlo) as f:
            by_scope = cycles_by_scope(f.read(), args.depth)
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"{args.hlo}: cannot read it ({e})") from None
    if not by_scope:
        raise SystemExit(f"{args.hlo}: no estimated_cycles (not a compiled TPU program?)")
    print(format_breakdown(scope_seconds(by_scope, clock, args.top)))


if __name__ == "__main__":
    main()
