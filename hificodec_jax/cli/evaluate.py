"""PESQ, STOI, ViSQOL, log-mel L1 and SI-SDR of a model's round trip, plus codebook usage (the
metric packages come with the [eval] extra)."""

from __future__ import annotations

import argparse
import os

from hificodec_jax.cli import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=common.MODEL_HELP)
    p.add_argument(
        "--data", required=True, nargs="+", help="directory, files, globs, or TFDS_DIR:SPLIT"
    )
    p.add_argument("--out", default=None, help="report prefix (writes PREFIX.json, PREFIX.csv)")
    p.add_argument("--levels", type=common.levels, default=None, help=common.LEVELS_HELP)
    common.add_progress(p)
    common.add_cache_argument(p)


def run(args: argparse.Namespace) -> int:
    from hificodec_jax.inference import evaluation

    common.enable_cache(args)
    if len(args.data) == 1 and ":" in args.data[0] and not os.path.exists(args.data[0]):
        # TFDS ArrayRecord data prepared by `hificodec-jax prepare`: DIR:SPLIT
        from hificodec_jax.data.input_pipeline import ArrayRecordAudioSource

        model = common.load_model(args.model, args.levels)
        data_dir, split = args.data[0].rsplit(":", 1)
        src = ArrayRecordAudioSource(data_dir, split, model.sample_rate)
        files = {src.name(i): src[i] for i in range(len(src))}
    else:
        files = [path for path, _ in common.inputs(args.data, audio=True)]
        model = common.load_model(args.model, args.levels)
    result = evaluation.evaluate(
        model.codec, model.variables, files, sample_rate=model.sample_rate,
        num_levels=args.levels, progress=args.progress, config=model.config,
    )  # fmt: skip
    print(evaluation.format_table(result))
    if args.out:
        paths = evaluation.write_report(result, args.out)
        common.note("wrote " + ", ".join(map(str, paths)))
    return 0
