"""Your local copy of a speech corpus (LibriTTS, VCTK, AISHELL or any audio tree) -> TFDS
ArrayRecord train/validation shards for training (--config.data.tfds_dir)."""

from __future__ import annotations

import argparse

# corpora.KINDS, repeated so that --help needs no TFDS import (tests/corpora_test.py checks)
KINDS = ("libritts", "vctk", "aishell", "generic")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=KINDS, required=True, help="the corpus's layout")
    p.add_argument("--root", required=True, help="your local copy of the corpus")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--sample_rate", type=int, default=16000, help="the model's rate (Hz)")
    p.add_argument(
        "--held_out_fraction", type=float, default=0.02, help="share of the validation split"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out hash")
    p.add_argument(
        "--split_by",
        choices=("speaker", "utterance"),
        default="speaker",
        help="hold out whole speakers (default) or single utterances",
    )
    p.add_argument("--subsets", default="", help="comma-separated, e.g. train-clean-100")
    p.add_argument("--mic", default="mic1", help="VCTK microphone")
    p.add_argument("--num_workers", type=int, default=4, help="decoding threads")
    p.add_argument("--name", default=None, help="config name (default <kind>_<rate>)")


def run(args: argparse.Namespace) -> int:
    from hificodec_jax.data.corpora import prepare_corpus

    data_dir = prepare_corpus(
        args.kind,
        args.root,
        args.out,
        sample_rate=args.sample_rate,
        held_out_fraction=args.held_out_fraction,
        seed=args.seed,
        split_by=args.split_by,
        subsets=[s for s in args.subsets.split(",") if s] or None,
        mic=args.mic,
        num_workers=args.num_workers,
        name=args.name,
    )
    print(data_dir)
    return 0
