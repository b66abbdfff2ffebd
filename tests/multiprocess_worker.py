"""One process of the 2-process CPU training test (``multiprocess_test.py``).

``python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR TOTAL_STEPS FSDP``:
joins the run through ``jax.distributed.initialize`` (CPU collectives: gloo), trains the tiny
config with ``train_and_evaluate`` and saves this process's host copy of the final state to
``WORKDIR/state_<PROCESS_ID>.npz``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np
from helpers import smooth_adam, tiny_train_config

from hificodec_jax.training import sharding
from hificodec_jax.training.loop import train_and_evaluate


def main():
    pid, nproc, port, data_dir, workdir, steps, fsdp = sys.argv[1:]
    jax.distributed.initialize(f"127.0.0.1:{port}", int(nproc), int(pid))
    cfg = smooth_adam(tiny_train_config(data_dir, int(steps)))
    cfg.mesh.fsdp = int(fsdp)
    cfg.mesh.fsdp_min_size = 0
    state = train_and_evaluate(cfg, workdir)
    leaves = jax.tree_util.tree_flatten_with_path(sharding.to_host(state))[0]
    np.savez(
        os.path.join(workdir, f"state_{pid}.npz"),
        **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves},
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
