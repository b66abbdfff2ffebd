"""hificodec-jax (also ``python -m hificodec_jax.cli``): use a model as a codec.

Subcommands (one module each in this package; ``hificodec-jax COMMAND --help`` for options):
    encode    IN [IN ...] --model MODEL [--out OUT.hfc|DIR] [--levels L] [--exact]
    decode    IN.hfc [IN.hfc ...] --model MODEL [--out OUT.wav|DIR] [--float] [--model-rate]
              [--stream -|PCM_FILE --chunk-frames N]
    roundtrip IN [IN ...] --model MODEL [--out OUT.wav|DIR] [--levels L] [--exact] [--float]
    evaluate  --model MODEL --data DIR_OR_FILES [--out PREFIX] [--levels L]
    download  NAME [--revision R] [--force]
    convert   CKPT.pth --config NAME_OR_FILE --out MODEL_DIR
    export    MODEL --out DIR [--platforms cpu,cuda,tpu]
    prepare   --kind libritts|vctk|aishell|generic --root COPY --out DIR [--sample_rate SR]
    tokenize  --model MODEL --input SOURCE --out DIR [--levels L] | --verify DIR [--sample K]
              | --export DIR --format npy|hf --out OUT
    compile   --target v5e-8|h100|... --config CONFIG[:variant] [--config.KEY=VALUE ...]
              --job train|encode|decode|roundtrip [--batch-size N | --max-batch]

Inputs are files, directories (searched recursively; outputs keep the relative directory
structure) or globs; without ``--out`` each output goes beside its input. Audio is read with
soundfile (librosa for mp3/m4a/opus where needed), mixed to mono and resampled to the model's
rate, with a note on stderr when that happens; decoding restores the input's length and sample
rate and writes 16-bit PCM. Files up to one encode window (10 s) are encoded in batches, longer
ones window by window, so memory stays flat however long the file is. Compiled programs are
cached between calls (``--cache-dir``, ``$HIFICODEC_JAX_CACHE``). Exit status 2: bad arguments
or inputs, reported before the model loads (nothing is written); 1: a file that could not be
processed (the others are written; ``--strict``: all or nothing).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hificodec_jax import __version__, platforms
from hificodec_jax.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, CliError

__all__ = ["COMMANDS", "CliError", "main", "make_parser"]

# Subcommand -> module in this package (imported when the parser is built: each module keeps
# its heavy imports inside ``run`` so that ``--help`` and bad arguments answer at once).
COMMANDS = (
    "encode", "decode", "roundtrip", "evaluate", "download", "convert", "export", "prepare",
    "tokenize", "compile",
)  # fmt: skip


def _module(command: str):
    return importlib.import_module(f"hificodec_jax.cli.{command}")


def make_parser() -> argparse.ArgumentParser:
    """The ``hificodec-jax`` argument parser (every option with help text)."""
    p = argparse.ArgumentParser(
        prog="hificodec-jax",
        description="HiFi-Codec in JAX: audio files to .hfc bitstreams and back. Exit status 2: "
        "bad arguments or inputs (nothing written); 1: a file that could not be processed.",
    )
    p.add_argument("--version", action="version", version=f"hificodec-jax {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        module = _module(command)
        summary = module.__doc__.strip().split("\n\n")[0].replace("\n", " ")
        s = sub.add_parser(command, help=summary.split(" (")[0].rstrip("."), description=summary)
        module.add_arguments(s)
        s.set_defaults(run=module.run)
    return p


def _message(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 or 1), or raises :class:`CliError`
    (a ``SystemExit``) after printing one line."""
    args = make_parser().parse_args(argv)
    platforms.default_to_cpu_without_accelerator()  # plugins of the [aot] extra, no chip here
    try:
        return args.run(args)
    except CliError as e:
        error = e
    except FileNotFoundError as e:  # a named input or model that does not exist
        error = CliError(_message(e), EXIT_BAD_INPUT)
    except (ValueError, OSError) as e:  # damaged files, unreadable models, failed writes
        error = CliError(_message(e), EXIT_FAILED)
    print(f"hificodec-jax {args.command}: {error}", file=sys.stderr)
    raise error


if __name__ == "__main__":
    sys.exit(main())
