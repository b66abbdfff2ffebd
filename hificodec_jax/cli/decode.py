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
    p.add_argument(
        "--stream",
        metavar="PATH",
        default=None,
        help="write raw 16-bit little-endian PCM at the model's rate as it is decoded, to PATH "
        "('-': stdout, e.g. | aplay -f S16_LE -r 16000); exact streaming decode, one input",
    )
    p.add_argument(
        "--chunk-frames",
        type=common.levels,
        default=5,
        help="frames decoded per step with --stream (latency vs. overhead; default 5)",
    )


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


def _stream(args: argparse.Namespace) -> int:
    """``--stream PATH``: one ``.hfc`` decoded chunk by chunk as raw PCM."""
    import sys

    if len(args.inputs) != 1 or not args.inputs[0].lower().endswith(".hfc"):
        raise common.CliError("--stream takes one .hfc file")
    bad = common.check_hfc_inputs([(args.inputs[0], None)])
    common.refuse_bad(bad, 1, strict=True)
    common.enable_cache(args)
    model = common.load_model(args.model)
    from hificodec_jax.inference import files
    from hificodec_jax.inference.streaming_pcm import stream_decode_to_pcm

    codes, header = files.read_codes(model, args.inputs[0])
    out = sys.stdout.buffer if args.stream == "-" else open(args.stream, "wb")  # noqa: SIM115
    try:

        def write(data: bytes) -> None:
            out.write(data)
            out.flush()  # a player downstream gets each chunk as soon as it is final

        n = stream_decode_to_pcm(model.codec, model.variables, codes, args.chunk_frames, write)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    common.note(
        f"{args.inputs[0]} -> {args.stream}: {n} samples of 16-bit PCM at {header.sample_rate} Hz"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.stream is not None:
        return _stream(args)
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
