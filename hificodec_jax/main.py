"""Entry point: ``python -m hificodec_jax.main --config=configs/grvq4.py [--workdir=DIR]``.

Parses flags, joins a multi-process run when asked, and hands over to
:func:`hificodec_jax.training.loop.train_and_evaluate`. All logic lives in importable modules.
Exit status 0: finished (also when the workdir's run had already finished); 143: preempted
(SIGTERM) after writing a checkpoint, rerun to resume. ``--config.init_from=MODEL`` fine-tunes a
model directory or released model; ``--config.resume_reference=G_PTH,DO_PTH`` continues a reference
(PyTorch) run from its ``g_`` + ``do_`` checkpoints (``configs/grvq4.py:academicodec``; add
``--config.resume_reference_fresh_stft=True`` for a single-GPU run's ``do_``);
``--verbosity=1`` adds orbax's checkpointing lines to the log.
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hificodec_jax import platforms
from hificodec_jax.training import loop as train
from hificodec_jax.training.preemption import PREEMPTED_EXIT_CODE

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
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (else auto-detected).")
flags.DEFINE_integer("num_processes", None, "Number of processes (else auto-detected).")
flags.DEFINE_integer("process_id", None, "This process's index (else auto-detected).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    platforms.default_to_cpu_without_accelerator()  # no TPU/CUDA probing on a chipless host
    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", name)
    logging.info("process %d/%d, %d devices, workdir %s", jax.process_index(),
                 jax.process_count(), jax.device_count(), workdir)  # fmt: skip
    state = train.train_and_evaluate(FLAGS.config, workdir)
    if int(state.step) < FLAGS.config.total_steps:
        raise SystemExit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    app.run(main)
