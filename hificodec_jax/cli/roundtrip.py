"""Audio -> codes -> audio, to hear what the codec keeps (no .hfc written)."""

from __future__ import annotations

import argparse

from hificodec_jax.cli import common
from hificodec_jax.cli.decode import add_output_arguments, write_decoded
from hificodec_jax.cli.encode import Failures, add_codec_arguments, add_encode_arguments, encoded

SUFFIX = ".roundtrip.wav"  # beside the input without --out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_codec_arguments(p, "audio files", SUFFIX)
    add_encode_arguments(p)
    add_output_arguments(p)


def run(args: argparse.Namespace) -> int:
    pairs = common.plan(args, audio=True, ext=SUFFIX if args.out is None else ".wav")
    failures = Failures(
        common.refuse_bad(common.check_audio_inputs(pairs), len(pairs), args.strict)
    )
    common.enable_cache(args)
    model = common.load_model(args.model, args.levels)
    good = [src for src, _ in pairs if src not in failures.failed]
    short = common.too_short(model, good)
    failures.failed |= common.refuse_bad(short, len(good), args.strict)
    write_decoded(args, model, encoded(args, pairs, model, failures), failures)
    return failures.status(len(pairs))
