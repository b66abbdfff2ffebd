"""hificodec-jax (also python -m hificodec_jax.cli): use a model as a codec.

Subcommands:
    convert CKPT.pth --config configs/grvq4.py --out MODEL_DIR
    encode  IN [IN ...] --model MODEL --out OUT.hfc|DIR [--levels L] [--exact]
    decode  IN.hfc [IN.hfc ...] --model MODEL --out OUT.wav|DIR [--float] [--model-rate]
    roundtrip IN [IN ...] --model MODEL --out OUT.wav|DIR [--levels L] [--exact] [--float]
    evaluate --model MODEL --data DIR_OR_FILES [--out PREFIX] [--levels L]

Inputs are files, directories (searched recursively; outputs keep the relative directory
structure) or globs. Audio is read with soundfile (librosa for mp3/m4a/opus where needed), mixed
to mono and resampled to the model's rate, with a note on stderr when that happens; decoding
restores the input's length and sample rate and writes 16-bit PCM. Files up to one encode window
(10 s) are encoded in batches, longer ones window by window, so memory stays flat however long
the file is. Exit status 2: bad arguments or inputs (nothing is written); 1: a file that cannot
be processed.
"""

from __future__ import annotations

import argparse
import os
import sys


class CliError(SystemExit):
    """An error for the user: :func:`main` prints it and exits with ``status`` (2 for bad
    arguments or inputs, as argparse does; 1 for a file that cannot be processed)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.code = status


def _note(msg: str) -> None:
    print(f"hificodec-jax: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------ inputs, outputs


def _inputs(paths: list[str], audio: bool) -> list[tuple[str, str]]:
    """``(file, name relative to its directory argument)`` of every input (audio, else ``.hfc``);
    a missing path, an empty directory or a glob without matches is a :class:`CliError`."""
    from hificodec_jax.audio.audio_io import AUDIO_EXTENSIONS
    from hificodec_jax.data.sources import expand_audio_paths

    try:
        return expand_audio_paths(paths, extensions=AUDIO_EXTENSIONS if audio else (".hfc",))
    except FileNotFoundError as e:
        raise CliError(str(e)) from None


def _plan(args, audio: bool, ext: str) -> list[tuple[str, str]]:
    """``(input, output)`` pairs, checked before anything is read or written: ``--out`` is the
    output file for one input file, else a directory mirroring the inputs' relative paths."""
    found = _inputs(args.inputs, audio)
    out = args.out
    if len(args.inputs) == 1 and os.path.isfile(args.inputs[0]) and not os.path.isdir(out):
        if out.endswith(os.sep):
            out = os.path.join(out, os.path.splitext(found[0][1])[0] + ext)
        pairs = [(found[0][0], out)]
    else:
        if os.path.exists(out) and not os.path.isdir(out):
            raise CliError(f"--out {out} is a file; for {len(found)} inputs give a directory")
        if not os.path.isdir(out) and out.lower().endswith(ext):
            raise CliError(f"--out {out} looks like a file name; for these inputs give a directory")
        pairs = [(src, os.path.join(out, os.path.splitext(rel)[0] + ext)) for src, rel in found]
    seen: dict[str, str] = {}
    for src, dst in pairs:
        if (other := seen.setdefault(os.path.normpath(dst), src)) != src:
            raise CliError(f"{other} and {src} would both be written to {dst}")
    existing = [dst for _, dst in pairs if os.path.exists(dst)]
    if existing and not args.overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CliError(f"{existing[0]} exists{more}; pass --overwrite to replace")
    return pairs


def _parent(path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


# ------------------------------------------------------------------------------ model


def _load(model: str, levels: int | None = None):
    """The model of ``--model``, with ``--levels`` checked against it (before any audio is read)."""
    from hificodec_jax.codec import files, model_io

    try:
        loaded = files.load_model(model)
    except model_io.ModelNotFoundError as e:
        raise CliError(f"--model: {e}") from None
    try:
        loaded.codec.quantizer.check_levels(levels)
    except ValueError:
        r = loaded.codec.quantizer.num_levels
        raise CliError(f"--levels {levels}: this model has levels 1 to {r}") from None
    return loaded


# ------------------------------------------------------------------------------ subcommands


def cmd_convert(args) -> None:
    from hificodec_jax.codec.convert import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.config, args.out, overwrite=args.overwrite)
    _note(f"wrote model directory {out}")


def cmd_encode(args) -> None:
    from hificodec_jax.codec import files
    from hificodec_jax.codec.bitstream import write_hfc

    pairs = _plan(args, audio=True, ext=".hfc")
    model = _load(args.model, args.levels)
    items = (((src, dst), src) for src, dst in pairs)
    for (src, dst), codes, header in files.encode_files(
        model, items, num_levels=args.levels, exact=args.exact, progress=args.progress, note=_note
    ):
        size = write_hfc(_parent(dst), codes, header)
        _note(
            f"{src} -> {dst}: {header.num_frames} frames, {size} bytes, {header.bitrate:.0f} bit/s"
        )


def _write_decoded(args, model, items) -> None:
    from hificodec_jax.codec import files

    for (src, dst), wav, header in files.decode_codes(model, items, progress=args.progress):
        wav, rate = files.restore(wav, header, args.model_rate)
        files.write_audio(_parent(dst), wav, rate, as_float=args.float, note=_note)
        _note(f"{src} -> {dst}: {len(wav) / rate:.2f} s at {rate} Hz ({header.bitrate:.0f} bit/s)")


def cmd_decode(args) -> None:
    from hificodec_jax.codec import files

    pairs = _plan(args, audio=False, ext=".wav")
    model = _load(args.model)
    items = (((src, dst), *files.read_codes(model, src)) for src, dst in pairs)
    _write_decoded(args, model, items)


def cmd_roundtrip(args) -> None:
    from hificodec_jax.codec import files

    pairs = _plan(args, audio=True, ext=".wav")
    model = _load(args.model, args.levels)
    items = (((src, dst), src) for src, dst in pairs)
    encoded = files.encode_files(
        model, items, num_levels=args.levels, exact=args.exact, progress=args.progress, note=_note
    )
    _write_decoded(args, model, encoded)


def cmd_evaluate(args) -> None:
    from hificodec_jax.codec import evaluation

    if len(args.data) == 1 and ":" in args.data[0] and not os.path.exists(args.data[0]):
        # TFDS ArrayRecord data prepared by hificodec_jax.data.corpora: DIR:SPLIT
        from hificodec_jax.data.input_pipeline import ArrayRecordAudioSource

        model = _load(args.model, args.levels)
        data_dir, split = args.data[0].rsplit(":", 1)
        src = ArrayRecordAudioSource(data_dir, split, model.sample_rate)
        files = {src.name(i): src[i] for i in range(len(src))}
    else:
        files = [path for path, _ in _inputs(args.data, audio=True)]
        model = _load(args.model, args.levels)
    result = evaluation.evaluate(
        model.codec, model.variables, files, sample_rate=model.sample_rate,
        num_levels=args.levels, progress=args.progress, config=model.config,
    )  # fmt: skip
    print(evaluation.format_table(result))
    if args.out:
        paths = evaluation.write_report(result, args.out)
        _note("wrote " + ", ".join(map(str, paths)))


# ------------------------------------------------------------------------------ parser


def _levels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


_LEVELS_HELP = "residual levels to use (default: all; fewer give a lower bitrate)"
_MODEL_HELP = (
    "a model directory (written by convert, or a training run's export: WORKDIR/export) "
    "or a released model's name (hificodec-16k-320d, ...)"
)


def make_parser() -> argparse.ArgumentParser:
    """The ``hificodec-jax`` argument parser (every option with help text)."""
    p = argparse.ArgumentParser(
        prog="hificodec-jax",
        description="HiFi-Codec in JAX: audio files to .hfc bitstreams and back. Exit status 2: "
        "bad arguments or inputs (nothing written); 1: a file that cannot be processed.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="released .pth checkpoint -> model directory")
    c.add_argument("checkpoint", help="the reference's generator checkpoint (.pth)")
    c.add_argument("--config", required=True, help="configs/*.py of the checkpoint's model")
    c.add_argument("--out", required=True, help="model directory to write")
    c.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    c.set_defaults(fn=cmd_convert)
    for name, fn, help_ in (
        ("encode", cmd_encode, "audio files -> .hfc bitstreams"),
        ("decode", cmd_decode, ".hfc bitstreams -> 16-bit wav files"),
        ("roundtrip", cmd_roundtrip, "audio -> codes -> audio"),
    ):
        s = sub.add_parser(name, help=help_, description=help_)
        what = ".hfc files" if name == "decode" else "audio files"
        s.add_argument("inputs", nargs="+", help=f"{what}, directories (recursive) or globs")
        s.add_argument("--model", required=True, help=_MODEL_HELP)
        s.add_argument(
            "--out",
            required=True,
            help="output file for one input file, else a directory (relative paths are kept)",
        )
        s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        if name != "decode":
            s.add_argument("--levels", type=_levels, default=None, help=_LEVELS_HELP)
            s.add_argument(
                "--exact",
                action="store_true",
                help="whole-file GroupNorm statistics for files over 10 s: codes equal "
                "whole-file encoding (several passes, slower)",
            )
        if name != "encode":
            s.add_argument("--float", action="store_true", help="write 32-bit float wav")
            s.add_argument(
                "--model-rate",
                action="store_true",
                help="keep the model's sample rate instead of the input's",
            )
        s.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no progress bars"
        )
        s.set_defaults(fn=fn)
    e = sub.add_parser("evaluate", help="PESQ/STOI/ViSQOL/mel/SI-SDR + codebook usage")
    e.add_argument("--model", required=True, help=_MODEL_HELP)
    e.add_argument(
        "--data", required=True, nargs="+", help="directory, files, globs, or TFDS_DIR:SPLIT"
    )
    e.add_argument("--out", default=None, help="report prefix (writes PREFIX.json, PREFIX.csv)")
    e.add_argument("--levels", type=_levels, default=None, help=_LEVELS_HELP)
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    e.set_defaults(fn=cmd_evaluate)
    from hificodec_jax.codec.pretrained import add_download_command

    add_download_command(sub)
    from hificodec_jax.codec.export import add_export_command

    add_export_command(sub)
    return p


def _message(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; errors print one line and raise :class:`CliError`."""
    args = make_parser().parse_args(argv)
    try:
        args.fn(args)
        return 0
    except CliError as e:
        error = e
    except (ValueError, OSError) as e:  # damaged files, unreadable models, failed writes
        error = CliError(_message(e), 1)
    print(f"hificodec-jax {args.command}: {error}", file=sys.stderr)
    raise error


if __name__ == "__main__":
    sys.exit(main())
