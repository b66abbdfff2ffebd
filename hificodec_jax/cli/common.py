"""What the ``hificodec-jax`` subcommands share: errors and exit statuses, input planning,
fail-fast input checks, the model loader, the compilation cache.

Exit statuses: 0 done; 2 a bad argument or input (nothing written, reported before the model
loads); 1 a valid input that could not be processed (the other files are still written).
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1

LEVELS_HELP = "residual levels to use (default: all; fewer give a lower bitrate)"
MODEL_HELP = (
    "a model directory (written by convert, or a training run's export: WORKDIR/export) "
    "or a released model's name (hificodec-16k-320d, ...)"
)


class CliError(SystemExit):
    """An error for the user: :func:`hificodec_jax.cli.main` prints it and exits with
    ``status`` (2 for bad arguments or inputs, as argparse does; 1 for a file that cannot be
    processed)."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = status


def note(msg: str) -> None:
    print(f"hificodec-jax: {msg}", file=sys.stderr)


def levels(text: str) -> int:
    """argparse type of ``--levels``: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )


# ------------------------------------------------------------------------------ inputs, outputs


def inputs(paths: list[str], audio: bool) -> list[tuple[str, str]]:
    """``(file, name relative to its directory argument)`` of every input (audio, else ``.hfc``);
    a missing path, an empty directory or a glob without matches is a :class:`CliError`."""
    from hificodec_jax.audio.audio_io import AUDIO_EXTENSIONS, expand_audio_paths

    try:
        return expand_audio_paths(paths, extensions=AUDIO_EXTENSIONS if audio else (".hfc",))
    except FileNotFoundError as e:
        raise CliError(str(e)) from None


def plan(args, audio: bool, ext: str) -> list[tuple[str, str]]:
    """``(input, output)`` pairs, checked before anything is read or written: ``--out`` is the
    output file for one input file, else a directory mirroring the inputs' relative paths;
    without ``--out`` each output goes beside its input with the extension ``ext``."""
    found = inputs(args.inputs, audio)
    out = args.out
    if out is None:
        pairs = [(src, os.path.splitext(src)[0] + ext) for src, _ in found]
    elif len(args.inputs) == 1 and os.path.isfile(args.inputs[0]) and not os.path.isdir(out):
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
        if os.path.normpath(dst) == os.path.normpath(src):
            raise CliError(f"{src} would be overwritten by its own output; give --out")
        if (other := seen.setdefault(os.path.normpath(dst), src)) != src:
            raise CliError(f"{other} and {src} would both be written to {dst}")
    existing = [dst for _, dst in pairs if os.path.exists(dst)]
    if existing and not args.overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CliError(f"{existing[0]} exists{more}; pass --overwrite to replace")
    return pairs


def check_audio_inputs(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, float]]:
    """``({file: reason}, {file: seconds})``: the inputs that are not usable audio, and the
    others' durations, from soundfile's header without decoding (formats only librosa reads
    are checked when decoded; their duration is ``inf`` here)."""
    import soundfile as sf

    bad, seconds = {}, {}
    for src, _ in pairs:
        if src.lower().endswith(".hfc"):
            bad[src] = "a .hfc bitstream, not audio (use `hificodec-jax decode`)"
        elif os.path.getsize(src) == 0:
            bad[src] = "empty file"
        else:
            try:
                info = sf.info(src)
            except Exception as e:  # noqa: BLE001 - soundfile raises its own error types
                if src.lower().endswith((".wav", ".flac", ".ogg", ".aiff", ".aif")):
                    bad[src] = f"unreadable audio ({str(e).strip() or type(e).__name__})"
                else:
                    seconds[src] = float("inf")
                continue
            if info.frames == 0:
                bad[src] = "holds no audio samples"
            else:
                seconds[src] = info.frames / info.samplerate
    return bad, seconds


def check_hfc_inputs(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``{file: reason}`` of the inputs that are not valid ``.hfc`` files (header and checksum;
    the model they belong to is checked once it is loaded)."""
    from hificodec_jax.inference.bitstream import read_hfc

    bad = {}
    for src, _ in pairs:
        if not src.lower().endswith(".hfc"):
            bad[src] = "not a .hfc bitstream (decode takes what `hificodec-jax encode` writes)"
            continue
        try:
            codes, _ = read_hfc(src)
        except (OSError, ValueError) as e:
            bad[src] = str(e).removeprefix(f"{src}: ")
            continue
        if codes.shape[0] == 0:
            bad[src] = "holds no frames"
    return bad


def refuse_bad(bad: dict[str, str], total: int, strict: bool) -> set[str]:
    """Reports bad inputs; all of them bad, or any with ``strict``, is a :class:`CliError`
    (exit 2, nothing written). Returns the files to skip."""
    if not bad:
        return set()
    items = list(bad.items())
    stop = strict or len(bad) == total
    for path, reason in items[1:] if stop else items:
        note(f"{path}: {reason}")
    if stop:
        first, why = items[0]
        more = f" (and the {len(bad) - 1} bad inputs above)" if len(bad) > 1 else ""
        raise CliError(f"{first}: {why}{more}; nothing written")
    return set(bad)


def parent(path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


# ------------------------------------------------------------------------------ model, cache


def load_model(name: str, levels: int | None = None):
    """The :class:`hificodec_jax.Model` of ``--model``, with ``--levels`` checked against it
    (before anything is compiled)."""
    from hificodec_jax.loading import load
    from hificodec_jax.model_dir import ModelNotFoundError

    try:
        model = load(name)
    except ModelNotFoundError as e:
        raise CliError(f"--model: {e}") from None
    try:
        model.codec.quantizer.check_levels(levels)
    except ValueError:
        r = model.codec.quantizer.num_levels
        raise CliError(f"--levels {levels}: this model has levels 1 to {r}") from None
    return model


def too_short(model, seconds: dict[str, float]) -> dict[str, str]:
    """``{file: reason}`` of the audio inputs (``{file: seconds}``) shorter than one frame of
    ``model`` (before anything is compiled)."""
    hop, rate = model.codec.hop, model.sample_rate
    return {
        p: f"shorter than one frame of this model ({hop} samples at {rate} Hz)"
        for p, s in seconds.items()
        if s * rate < hop
    }


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="compiled-program cache (default $HIFICODEC_JAX_CACHE, else "
        "$XDG_CACHE_HOME/hificodec_jax/xla or ~/.cache/hificodec_jax/xla; 'off' disables)",
    )


def enable_cache(args) -> None:
    from hificodec_jax.inference.compile_cache import enable_compilation_cache

    enable_compilation_cache(getattr(args, "cache_dir", None))
