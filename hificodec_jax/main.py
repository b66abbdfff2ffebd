"""Entry point: ``python -m hificodec_jax.main --config=configs/grvq4.py [--workdir=DIR]``.

Parses flags, joins a multi-process run when asked, and hands over to
:func:`hificodec_jax.train.train_and_evaluate`. All logic lives in importable modules.
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hificodec_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard events (default runs/<config>).")
flags.DEFINE_bool(
    "distributed",
    bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES")),
    "Call jax.distributed.initialize() (auto-detects Cloud TPU, SLURM, Open MPI).",
)
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.distributed:
        jax.distributed.initialize()
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", name)
    logging.info("process %d/%d, %d devices, workdir %s", jax.process_index(),
                 jax.process_count(), jax.device_count(), workdir)  # fmt: skip
    train.train_and_evaluate(FLAGS.config, workdir)


if __name__ == "__main__":
    app.run(main)
