"""Audio files -> .hfc bitstreams (the codes, bit-packed, with a header and a checksum)."""

from __future__ import annotations

import argparse

from hificodec_jax.cli import common


def add_codec_arguments(p: argparse.ArgumentParser, what: str, ext: str) -> None:
    """The arguments encode, decode and roundtrip share."""
    p.add_argument("inputs", nargs="+", help=f"{what}, directories (recursive) or globs")
    p.add_argument("--model", required=True, help=common.MODEL_HELP)
    p.add_argument(
        "--out",
        default=None,
        help="output file for one input file, else a directory (relative paths are kept); "
        f"default: beside each input, with the extension {ext}",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--strict",
        action="store_true",
        help="any bad input stops the command before anything is written (default: the good "
        "files are written, each bad one is named, exit status 1)",
    )
    common.add_progress(p)
    common.add_cache_argument(p)


def add_encode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--levels", type=common.levels, default=None, help=common.LEVELS_HELP)
    p.add_argument(
        "--exact",
        action="store_true",
        help="whole-file GroupNorm statistics for files over 10 s: codes equal whole-file "
        "encoding (several passes, slower)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_codec_arguments(p, "audio files", ".hfc")
    add_encode_arguments(p)


class Failures:
    """Files that could not be processed: each named on stderr; any makes the exit status 1."""

    def __init__(self, skipped: set[str]):
        self.failed = set(skipped)
        self.first: str | None = None

    def __call__(self, key, error: Exception) -> None:
        src = key[0] if isinstance(key, tuple) else key
        message = str(error) if src in str(error) else f"{src}: {error}"
        common.note(message)
        self.failed.add(src)
        self.first = self.first or message

    def status(self, total: int) -> int:
        """0, or 1 when some inputs failed; a :class:`CliError` (status 1) when all did."""
        if not self.failed:
            return 0
        if len(self.failed) == total and self.first is not None:
            raise common.CliError(self.first, common.EXIT_FAILED)
        common.note(f"{len(self.failed)} of {total} inputs failed (named above)")
        return common.EXIT_FAILED


def encoded(args, pairs, model, failures: Failures):
    from hificodec_jax.inference import files

    items = (((src, dst), src) for src, dst in pairs if src not in failures.failed)
    return files.encode_files(
        model, items, num_levels=args.levels, exact=args.exact, progress=args.progress,
        note=common.note, on_error=failures,
    )  # fmt: skip


def checked_audio_and_model(args: argparse.Namespace, ext: str):
    """``(pairs, failures, model)`` of encode and roundtrip: the audio inputs checked before
    the model loads, then against it (clips shorter than one frame), before anything compiles."""
    pairs = common.plan(args, audio=True, ext=ext)
    bad, seconds = common.check_audio_inputs(pairs)
    failures = Failures(common.refuse_bad(bad, len(pairs), args.strict))
    common.enable_cache(args)
    model = common.load_model(args.model, args.levels)
    failures.failed |= common.refuse_bad(
        common.too_short(model, seconds), len(seconds), args.strict
    )
    return pairs, failures, model


def run(args: argparse.Namespace) -> int:
    pairs, failures, model = checked_audio_and_model(args, ".hfc")
    from hificodec_jax.inference.bitstream import write_hfc

    for (src, dst), codes, header in encoded(args, pairs, model, failures):
        size = write_hfc(common.parent(dst), codes, header)
        common.note(
            f"{src} -> {dst}: {header.num_frames} frames, {size} bytes, {header.bitrate:.0f} bit/s"
        )
    return failures.status(len(pairs))
