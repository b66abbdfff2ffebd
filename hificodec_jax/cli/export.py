"""A model's encode and decode as serialized StableHLO with the weights baked in, for serving
with plain JAX (writes DIR/encode.bin, DIR/decode.bin, DIR/export.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hificodec_jax.cli import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=common.MODEL_HELP)
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument(
        "--platforms",
        default="cpu",
        help="comma-separated platforms the programs run on, of cpu,cuda,rocm,tpu",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")


def run(args: argparse.Namespace) -> int:
    if (Path(args.out) / "export.json").exists() and not args.overwrite:
        raise common.CliError(f"{args.out} holds an export; pass --overwrite to replace it")
    from hificodec_jax.inference.export import check_platforms, export_model

    try:
        platforms = check_platforms(args.platforms.split(","))
    except ValueError as e:
        raise common.CliError(f"--platforms: {e}") from None
    meta = export_model(common.load_model(args.model), args.out, platforms)
    common.note(f"wrote {args.out} for {','.join(meta['platforms'])}")
    return 0
