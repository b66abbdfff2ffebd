"""Tokenize a corpus into codec codes for a codec language model (exact, resumable, multi-host).

``hificodec-jax tokenize --model NAME_OR_DIR --input SOURCE --out DIR [--levels L]`` writes the
store; rerunning the same command resumes. ``hificodec-jax tokenize --verify DIR [--sample K]``
checks a finished store; ``hificodec-jax tokenize --export DIR --format npy|hf --out OUT`` writes
it as one ``.npy`` per record or as a Hugging Face dataset. Multi-process:
``--coordinator_address/--num_processes/--process_id`` (or ``--distributed`` to auto-detect
Cloud TPU / SLURM), as the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", help="released model name or model directory")
    a("--input", help="audio directory, glob, JSONL manifest, Kaldi data dir or ArrayRecord corpus")
    a("--out", help="output store directory (rerun to resume)")
    a("--levels", type=int, default=None, help="residual levels kept (default: all)")
    a("--unit-hours", type=float, default=1.0, help="audio hours per work unit / shard")
    a("--batch-seconds", type=float, default=240.0, help="padded audio seconds per device call")
    a("--max-batch", type=int, default=64, help="clips per device call at most")
    a("--window-seconds", type=float, default=30.0, help="clips up to this long are batched")
    a("--whole-seconds", type=float, default=300.0,
      help="longer files go through the windowed long-file path")  # fmt: skip
    a("--max-error-rate", type=float, default=0.01, help="fail past this share of bad records")
    a("--workers", type=int, default=None, help="audio reading threads (default: CPUs, <= 16)")
    a("--split", default="train", help="split of an ArrayRecord corpus input")
    a("--keep-silent", action="store_true", help="tokenize silent records instead of failing them")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--verify", metavar="DIR", help="check the store DIR instead of tokenizing")
    a("--sample", type=int, default=8, help="--verify: records re-encoded alone")
    a("--seed", type=int, default=0, help="--verify: which records are sampled")
    a("--export", metavar="DIR", help="export the store DIR (with --format and --out)")
    a("--format", choices=("npy", "hf"), default="npy",
      help="--export: one .npy per record, or a Hugging Face datasets dataset")  # fmt: skip
    a("--distributed", action="store_true",
      help="jax.distributed.initialize() with auto-detection (Cloud TPU, SLURM)")  # fmt: skip
    a("--coordinator_address", default=None, help="host:port of process 0")
    a("--num_processes", type=int, default=None, help="number of processes")
    a("--process_id", type=int, default=None, help="this process's index")


def _fail(message: str, status: int) -> int:
    print(f"hificodec-jax tokenize: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from hificodec_jax.tokens import export, job, verification

    if args.export:
        if not args.out:
            return _fail("--export needs --out", 2)
        write = export.export_npy if args.format == "npy" else export.export_hf
        try:
            summary = write(args.export, args.out, progress=not args.no_progress)
        except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
            return _fail(str(e), 2)
        print(json.dumps(summary))
        return 0
    if args.verify:
        if not os.path.isdir(args.verify):
            return _fail(f"--verify {args.verify}: no such directory", 2)
        try:
            report = verification.verify(
                args.verify, sample=args.sample, model=args.model, seed=args.seed
            )
        except (FileNotFoundError, ValueError) as e:
            return _fail(str(e), 2)
        for p in report["problems"]:
            print(f"problem: {p}", file=sys.stderr)
        print(json.dumps({k: v for k, v in report.items() if k != "problems"}))
        return 0 if report["ok"] else 1
    missing = [f"--{n}" for n in ("model", "input", "out") if not getattr(args, n)]
    if missing:
        return _fail(f"{', '.join(missing)} required (or --verify DIR, --export DIR)", 2)
    if args.distributed or args.coordinator_address:
        import jax

        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    try:
        summary = job.tokenize(
            args.model, args.input, args.out, levels=args.levels, unit_hours=args.unit_hours,
            batch_seconds=args.batch_seconds, max_batch=args.max_batch,
            window_seconds=args.window_seconds, whole_seconds=args.whole_seconds,
            max_error_rate=args.max_error_rate, workers=args.workers, split=args.split,
            reject_silent=not args.keep_silent, progress=not args.no_progress,
        )  # fmt: skip
    except job.TokenizeError as e:
        return _fail(str(e), 1)
    except (ValueError, FileNotFoundError) as e:  # bad arguments, input or model
        return _fail(str(e), 2)
    print(json.dumps(summary))
    return 0
