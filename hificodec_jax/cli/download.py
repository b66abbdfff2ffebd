"""Download and convert a released model by name; prints its model directory (which works as
--model, as does the name itself)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hificodec_jax.presets import preset_names

    p.add_argument("name", help=f"a released model's name: {', '.join(preset_names())}")
    p.add_argument("--revision", default=None, help="branch, tag or commit on the Hub")
    p.add_argument("--force", action="store_true", help="download and convert again")


def run(args: argparse.Namespace) -> int:
    from hificodec_jax import hub

    # An unknown name is hub's ModelNotFoundError, a FileNotFoundError: exit status 2.
    print(hub.download(args.name, revision=args.revision, force_download=args.force))
    return 0
