"""A released AcademiCodec .pth checkpoint -> a model directory (read without torch, nothing in
the file is executed)."""

from __future__ import annotations

import argparse
import os

from hificodec_jax.cli import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the reference's generator checkpoint (.pth)")
    p.add_argument(
        "--config",
        required=True,
        help="the checkpoint's architecture: a released model's name (hificodec-16k-320d, "
        "hificodec-24k-240d, ...) or a config file (configs/grvq4.py)",
    )
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")


def run(args: argparse.Namespace) -> int:
    from hificodec_jax.factory import load_config
    from hificodec_jax.reference.convert import convert_checkpoint

    try:
        config = load_config(args.config)
    except FileNotFoundError as e:
        raise common.CliError(f"--config: {e}") from None
    if os.path.exists(args.out) and not args.overwrite:
        raise common.CliError(f"{args.out} exists; pass --overwrite to replace")
    out = convert_checkpoint(args.checkpoint, config, args.out, overwrite=args.overwrite)
    common.note(f"wrote model directory {out}")
    return 0
