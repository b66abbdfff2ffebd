"""Entry point: ``python -m hificodec_jax.main --config=configs/grvq4.py [--workdir=DIR]``.

Parses flags and hands over to the job; all logic lives in importable modules. Until the
trainer lands, the job is :func:`hificodec_jax.roundtrip_demo.run`.
"""

from absl import app, flags
from ml_collections import config_flags

from hificodec_jax import roundtrip_demo

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    roundtrip_demo.run(FLAGS.config, FLAGS.workdir or roundtrip_demo.default_workdir(FLAGS))


if __name__ == "__main__":
    app.run(main)
