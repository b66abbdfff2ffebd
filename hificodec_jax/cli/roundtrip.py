"""Audio -> codes -> audio, to hear what the codec keeps (no .hfc written)."""

from __future__ import annotations

import argparse

from hificodec_jax.cli.decode import add_output_arguments, write_decoded
from hificodec_jax.cli.encode import (
    add_codec_arguments,
    add_encode_arguments,
    checked_audio_and_model,
    encoded,
)

SUFFIX = ".roundtrip.wav"  # beside the input without --out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_codec_arguments(p, "audio files", SUFFIX)
    add_encode_arguments(p)
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    pairs, failures, model = checked_audio_and_model(args, SUFFIX if args.out is None else ".wav")
    write_decoded(args, model, encoded(args, pairs, model, failures), failures)
    return failures.status(len(pairs))
