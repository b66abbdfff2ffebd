"""Compile a training or inference job for a TPU or GPU target on this host and report its fit.

    hificodec-jax compile --target v5e-8 --config configs/grvq4.py \\
        --job train --batch-size 64 [--config.precision=bfloat16 ...]
    hificodec-jax compile --target h100 --config configs/grvq4.py --max-batch

Prints a short table on stderr and ONE JSON line on stdout (``"fits"``, per-chip bytes, FLOPs,
compile time, the compiler's labelled estimates). Exit status: 0 the job fits, 1 it does not
(``--max-batch``: no batch fits) or the compile failed, 2 a bad argument, 3 this host has no
compiler for the target (the ``[aot]`` extra). Time estimates come
from the compiler's cost models (TPU only) and are not measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hificodec_jax.aot import targets as targets_lib

DOES_NOT_FIT = 1
CANNOT_CHECK = 3  # this host has no compiler for the target (the [aot] extra is missing)
_OVERRIDES = "config_overrides"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags; ``--config.KEY=VALUE`` overrides are collected by the parser too."""
    parser.add_argument(
        "--target",
        required=True,
        help="chips: <tpu>-<chips> (v5e, v6e; v4 and v5p count cores), <gpu>[-<gpus>] or cpu, "
        f"e.g. {', '.join(targets_lib.target_names())}",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="config file (configs/*.py[:variant]) or released model; --config.KEY=VALUE "
        "overrides its fields as in python -m hificodec_jax.main",
    )
    parser.add_argument(
        "--job",
        default="train",
        choices=("train", "encode", "decode", "roundtrip"),
        help="the trainer's step, or the codec's encode / decode / both (default train)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--batch-size", type=int, help="global batch (default: the config's)")
    size.add_argument(
        "--max-batch",
        action="store_true",
        help="find the largest power-of-two batch per chip that fits, by compiling",
    )
    parser.add_argument("--precision", choices=("bfloat16", "float32"), help="compute dtype")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="clip length of the inference jobs"
    )
    parser.add_argument(
        "--capacity-gib",
        type=float,
        default=float(os.environ.get("HIFICODEC_AOT_CAPACITY_GIB", 0)) or None,
        help="HBM per chip to fit in, instead of the chip's (env HIFICODEC_AOT_CAPACITY_GIB)",
    )
    parser.add_argument(
        "--xla-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra XLA compiler option, e.g. xla_tpu_sliced_prefetch_max_slices=0",
    )
    parser.add_argument(
        "--dump-hlo",
        metavar="FILE",
        help="write the compiled program's optimized HLO text here (with --max-batch: the "
        "largest batch that fits), e.g. to see where the compiler's estimated cycles go",
    )
    parser.add_argument("--quiet", action="store_true", help="no table, only the JSON line")
    parser.set_defaults(**{_OVERRIDES: []})
    _collect_config_overrides(parser)


def _collect_config_overrides(parser: argparse.ArgumentParser) -> None:
    """Take ``--config.KEY=VALUE`` / ``--config.KEY VALUE`` out of the arguments before
    argparse sees them (it cannot declare one option per config field), keeping them in
    ``args.config_overrides``; works whether this parser is the top level or a subcommand."""
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        overrides, rest, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg.startswith("--config."):
                if "=" not in arg and i + 1 < len(args):
                    arg, i = f"{arg}={args[i + 1]}", i + 1
                overrides.append(arg)
            else:
                rest.append(arg)
            i += 1
        namespace, extra = parse_known(rest, namespace)
        setattr(namespace, _OVERRIDES, [*getattr(namespace, _OVERRIDES, []), *overrides])
        return namespace, extra

    parser.parse_known_args = parse_known_args


def load_config(path: str, overrides: list[str]):
    """The config at ``path`` with ``--config.KEY=VALUE`` overrides applied as
    ``hificodec_jax.main`` applies them (ml_collections' config flags)."""
    from absl import flags
    from ml_collections import config_flags

    from hificodec_jax.factory import load_config as load

    config = load(path)
    if not overrides:
        return config
    values = flags.FlagValues()
    argv = ["compile", *overrides]
    try:  # sys_argv: the fields named on the command line get their override flags
        config_flags.DEFINE_config_dict(
            "config", config, flag_values=values, lock_config=False, sys_argv=argv
        )
        values(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"bad --config override: {e}") from e
    return values.config


def size(n: int) -> str:
    """Bytes as GiB, or MiB below 0.1 GiB."""
    return f"{n / 1024**3:.2f} GiB" if abs(n) >= 0.1 * 1024**3 else f"{n / 1024**2:.2f} MiB"


def _xla_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--xla-option must be KEY=VALUE, got {item!r}")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        if value in ("true", "false"):
            value = value == "true"
        options[key] = value
    return options


def _dump(path: str | None, hlo: str | None) -> None:
    if path and hlo is not None:
        with open(path, "w") as f:
            f.write(hlo)


def run(args: argparse.Namespace) -> int:
    """Compile and report; exit status 0 fits, 1 does not fit or failed, 2 bad input, 3 no
    compiler for the target on this host."""
    try:
        target = targets_lib.get_target(args.target)
        config = load_config(args.config, getattr(args, _OVERRIDES, []))
        options = _xla_options(args.xla_option)
        if args.batch_size is not None and (args.batch_size < 1 or args.batch_size % target.chips):
            raise ValueError(
                f"--batch-size {args.batch_size} must be a positive multiple of the "
                f"{target.chips} chips of {target.name}"
            )
        if args.seconds <= 0:
            raise ValueError(f"--seconds must be positive, got {args.seconds}")
    except (ValueError, FileNotFoundError) as e:
        print(f"hificodec-jax compile: {e}", file=sys.stderr)
        return 2
    targets_lib.prepare_environment()
    from hificodec_jax.aot import compile as aot

    capacity = int(args.capacity_gib * 1024**3) if args.capacity_gib else None
    common = dict(
        seconds=args.seconds,
        precision=args.precision,
        capacity_bytes=capacity,
        compiler_options=options or None,
    )
    hlo: list[str] = []
    if args.dump_hlo:
        common["on_compiled"] = lambda compiled: hlo.append(compiled.as_text())
    try:
        if args.max_batch:
            seen = []

            def on_report(r):
                seen.append(r)
                if not r.compiled:  # keeps ``hlo`` aligned with ``seen``
                    hlo.append(None)

            per_chip, report, over = aot.max_batch(
                args.target, config, args.job, on_report=on_report, **common
            )
            if not args.quiet:
                for r in seen:
                    print(aot.format_table(r), file=sys.stderr)
            result = {
                "max_batch_per_chip": per_chip,
                "max_batch": per_chip * target.chips,
                "report": aot.as_json_dict(report) if report else None,
                "next_report": aot.as_json_dict(over) if over else None,
            }
            print(json.dumps(result))
            _dump(args.dump_hlo, hlo[seen.index(report)] if report and hlo else None)
            return 0 if per_chip else DOES_NOT_FIT
        report = aot.compile_job(
            args.target, config, args.job, batch_size=args.batch_size, **common
        )
    except targets_lib.MissingCompilerError as e:
        print(f"hificodec-jax compile: {e}", file=sys.stderr)
        return CANNOT_CHECK
    except ValueError as e:
        print(f"hificodec-jax compile: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(aot.format_table(report), file=sys.stderr)
    print(json.dumps(aot.as_json_dict(report)))
    _dump(args.dump_hlo, hlo[-1] if hlo else None)
    if not report.fits:
        print(
            f"hificodec-jax compile: {args.job} at batch {report.batch} "
            f"({report.batch_per_chip} per chip) needs {size(report.total_bytes)} per chip; "
            f"{target.name} has {size(report.capacity_bytes)}: it does not fit",
            file=sys.stderr,
        )
        return DOES_NOT_FIT
    return 0
