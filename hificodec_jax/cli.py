"""``hificodec-jax`` (also ``python -m hificodec_jax.cli``): use a model as a codec.

Subcommands:
    convert CKPT.pth --config configs/grvq4.py --out MODEL_DIR
    encode  IN [IN ...] --model MODEL_DIR --out OUT.hfc|DIR [--levels L] [--exact]
    decode  IN.hfc [IN.hfc ...] --model MODEL_DIR --out OUT.wav|DIR
    roundtrip IN [IN ...] --model MODEL_DIR --out OUT.wav|DIR [--levels L] [--exact]
    evaluate --model MODEL_DIR --data DIR_OR_FILES [--out PREFIX] [--levels L]

Audio is read with soundfile (wav/flac/ogg; mp3 where libsndfile supports it), mixed to mono
and resampled to the model's rate, with a note on stderr when that happens. Long files are
processed in fixed-size chunks, so memory stays flat however long the file is. ``--exact``
encodes with whole-file GroupNorm statistics (``chunked_encode(global_norm=True)``: codes equal
whole-file encoding, at several passes over the file); by default each ~13 s window uses its
own statistics (one pass; codes differ from whole-file encoding only at near-ties).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def _note(msg: str) -> None:
    print(f"hificodec-jax: {msg}", file=sys.stderr)


def _read_audio(path: str, sample_rate: int) -> np.ndarray:
    import soundfile as sf  # noqa: PLC0415

    from hificodec_jax.audio.audio_io import load_audio  # noqa: PLC0415
    from hificodec_jax.models.codec import non_finite_message  # noqa: PLC0415

    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 (any libsndfile failure is a bad input file)
        raise SystemExit(f"hificodec-jax: cannot read audio file {path!r}: {e}") from None
    if info.channels != 1:
        _note(f"{path}: {info.channels} channels mixed down to mono")
    if info.samplerate != sample_rate:
        _note(f"{path}: resampled from {info.samplerate} Hz to {sample_rate} Hz")
    wav = load_audio(path, sample_rate)
    if message := non_finite_message(wav, repr(path)):
        raise SystemExit(f"hificodec-jax: {message}")
    return wav


def _outputs(inputs: list[str], out: str, ext: str) -> list[str]:
    """One output path per input: ``out`` itself for one input, else files in directory ``out``."""
    if len(inputs) == 1 and not out.endswith(os.sep) and not os.path.isdir(out):
        return [out]
    os.makedirs(out, exist_ok=True)
    return [os.path.join(out, os.path.splitext(os.path.basename(p))[0] + ext) for p in inputs]


def _expand(paths: list[str]) -> list[str]:
    files = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                files += [
                    os.path.join(root, n)
                    for n in sorted(names)
                    if n.lower().endswith(AUDIO_EXTENSIONS)
                ]
        else:
            files += sorted(glob.glob(p)) or [p]
    return files


def cmd_convert(args) -> None:
    from hificodec_jax.codec.convert import convert_checkpoint  # noqa: PLC0415

    out = convert_checkpoint(args.checkpoint, args.config, args.out, overwrite=args.overwrite)
    _note(f"wrote model directory {out}")


def _load(model_dir: str):
    from hificodec_jax.codec import model_io  # noqa: PLC0415

    codec, variables = model_io.load(model_dir)
    config = model_io.load_config_of(model_dir)
    return codec, variables, config, model_io.model_id(model_dir)


def _encode_file(codec, variables, config, mid, path, levels, progress, exact=False):
    from hificodec_jax.codec.bitstream import HfcHeader  # noqa: PLC0415
    from hificodec_jax.codec.inference import chunked_encode  # noqa: PLC0415

    sr = config.audio.sample_rate
    wav = _read_audio(path, sr)
    if len(wav) < codec.hop:
        raise SystemExit(f"hificodec-jax: {path!r} is shorter than one frame ({codec.hop} samples)")
    codes = chunked_encode(
        codec,
        variables,
        wav,
        num_levels=levels,
        progress=progress,
        sample_rate=sr,
        global_norm=exact,
    )
    q = config.model.quantizer
    header = HfcHeader(
        sample_rate=sr,
        hop=codec.hop,
        num_groups=q.num_groups,
        num_levels=q.num_levels,
        levels_used=codes.shape[1] // q.num_groups,
        codebook_size=q.codebook_size,
        model_id=mid,
        num_frames=codes.shape[0],
        original_length=len(wav),
    )
    return codes, header


def _decode_codes(codec, variables, config, codes, progress):
    from hificodec_jax.codec.inference import chunked_decode  # noqa: PLC0415

    return chunked_decode(
        codec, variables, codes, progress=progress, sample_rate=config.audio.sample_rate
    )


def _encoded_inputs(args, ext: str):
    """``(src, dst, codes, header, model)`` for each input of ``encode`` / ``roundtrip``, where
    ``model = (codec, variables, config)``."""
    codec, variables, config, mid = _load(args.model)
    inputs = _expand(args.inputs)
    for src, dst in zip(inputs, _outputs(inputs, args.out, ext), strict=True):
        codes, header = _encode_file(
            codec, variables, config, mid, src, args.levels, args.progress, args.exact
        )
        yield src, dst, codes, header, (codec, variables, config)


def cmd_encode(args) -> None:
    from hificodec_jax.codec.bitstream import write_hfc  # noqa: PLC0415

    for src, dst, codes, header, _ in _encoded_inputs(args, ".hfc"):
        size = write_hfc(dst, codes, header)
        _note(
            f"{src} -> {dst}: {header.num_frames} frames, {size} bytes, {header.bitrate:.0f} bit/s"
        )


def cmd_decode(args) -> None:
    import soundfile as sf  # noqa: PLC0415

    from hificodec_jax.codec.bitstream import read_hfc  # noqa: PLC0415

    codec, variables, config, mid = _load(args.model)
    inputs = _expand(args.inputs)
    for src, dst in zip(inputs, _outputs(inputs, args.out, ".wav"), strict=True):
        codes, header = read_hfc(src, expect_model_id=mid)
        if header.sample_rate != config.audio.sample_rate or header.hop != codec.hop:
            raise SystemExit(
                f"hificodec-jax: {src} was encoded at another rate/hop than this model"
            )
        wav = _decode_codes(codec, variables, config, codes, args.progress)
        sf.write(dst, wav, header.sample_rate, subtype="FLOAT")
        _note(f"{src} -> {dst}: {len(wav) / header.sample_rate:.2f} s")


def cmd_roundtrip(args) -> None:
    import soundfile as sf  # noqa: PLC0415

    for src, dst, codes, header, (codec, variables, config) in _encoded_inputs(args, ".wav"):
        wav = _decode_codes(codec, variables, config, codes, args.progress)
        sf.write(dst, wav, header.sample_rate, subtype="FLOAT")
        _note(f"{src} -> {dst} ({header.bitrate:.0f} bit/s)")


def cmd_evaluate(args) -> None:
    from hificodec_jax.codec import evaluation  # noqa: PLC0415

    codec, variables, config, _ = _load(args.model)
    if len(args.data) == 1 and ":" in args.data[0] and not os.path.exists(args.data[0]):
        # TFDS ArrayRecord data prepared by hificodec_jax.data.corpora: DIR:SPLIT
        from hificodec_jax.data.input_pipeline import ArrayRecordAudioSource  # noqa: PLC0415

        data_dir, split = args.data[0].rsplit(":", 1)
        src = ArrayRecordAudioSource(data_dir, split, config.audio.sample_rate)
        files = {src.name(i): src[i] for i in range(len(src))}
    else:
        files = _expand(args.data)
    if not files:
        raise SystemExit(f"hificodec-jax: no audio files in {args.data}")
    result = evaluation.evaluate(
        codec,
        variables,
        files,
        sample_rate=config.audio.sample_rate,
        num_levels=args.levels,
        progress=args.progress,
        config=config,
    )
    print(evaluation.format_table(result))
    if args.out:
        paths = evaluation.write_report(result, args.out)
        _note("wrote " + ", ".join(map(str, paths)))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hificodec-jax", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="released .pth checkpoint -> model directory")
    c.add_argument("checkpoint")
    c.add_argument("--config", required=True, help="configs/*.py of the checkpoint's model")
    c.add_argument("--out", required=True)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(fn=cmd_convert)
    for name, fn, help_ in (
        ("encode", cmd_encode, "audio files -> .hfc bitstreams"),
        ("decode", cmd_decode, ".hfc bitstreams -> wav files"),
        ("roundtrip", cmd_roundtrip, "audio -> codes -> audio"),
    ):
        s = sub.add_parser(name, help=help_)
        s.add_argument("inputs", nargs="+", help="files, directories or globs")
        s.add_argument("--model", required=True, help="model directory (see convert)")
        s.add_argument("--out", required=True, help="output file, or directory for many")
        if name != "decode":
            s.add_argument("--levels", type=int, default=None, help="residual levels to use")
            s.add_argument(
                "--exact",
                action="store_true",
                help="whole-file GroupNorm statistics: codes equal whole-file encoding (slower)",
            )
        s.add_argument("--no-progress", dest="progress", action="store_false")
        s.set_defaults(fn=fn)
    e = sub.add_parser("evaluate", help="PESQ/STOI/ViSQOL/mel/SI-SDR + codebook usage")
    e.add_argument("--model", required=True)
    e.add_argument(
        "--data", required=True, nargs="+", help="directory, files, globs, or TFDS_DIR:SPLIT"
    )
    e.add_argument("--out", default=None, help="report prefix (writes PREFIX.json, PREFIX.csv)")
    e.add_argument("--levels", type=int, default=None)
    e.add_argument("--no-progress", dest="progress", action="store_false")
    e.set_defaults(fn=cmd_evaluate)
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"hificodec-jax {args.command}: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
