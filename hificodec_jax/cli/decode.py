""".hfc bitstreams -> 16-bit wav files at the input's length and sample rate (or raw PCM to
stdout as it is decoded, with --stream -)."""

from __future__ import annotations

import argparse

from hificodec_jax.cli import common
from hificodec_jax.cli.encode import Failures, add_codec_arguments


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--float", action="store_true", help="write 32-bit float wav")
    p.add_argument(
        "--model-rate",
        action="store_true",
        help="keep the model's sample rate instead of the input's",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_codec_arguments(p, ".hfc files", ".wav")
    add_output_arguments(p)


def write_decoded(args, model, items, failures: Failures) -> None:
    from hificodec_jax.inference import files

    for (src, dst), wav, header in files.decode_codes(model, items, progress=args.progress):
        wav, rate = files.restore(wav, header, args.model_rate)
        try:
            files.write_audio(common.parent(dst), wav, rate, as_float=args.float, note=common.note)
        except ValueError as e:
            failures((src, dst), e)
            continue
        common.note(
            f"{src} -> {dst}: {len(wav) / rate:.2f} s at {rate} Hz ({header.bitrate:.0f} bit/s)"
        )


def run(args: argparse.Namespace) -> int:
    pairs = common.plan(args, audio=False, ext=".wav")
    failures = Failures(common.refuse_bad(common.check_hfc_inputs(pairs), len(pairs), args.strict))
    common.enable_cache(args)
    model = common.load_model(args.model)
    from hificodec_jax.inference import files

    def items():
        for src, dst in pairs:
            if src in failures.failed:
                continue
            try:
                yield ((src, dst), *files.read_codes(model, src))
            except ValueError as e:
                failures((src, dst), e)

    write_decoded(args, model, items(), failures)
    return failures.status(len(pairs))
