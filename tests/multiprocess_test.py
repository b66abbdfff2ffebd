"""Two JAX processes on this machine (2 simulated CPU devices each, gloo collectives) train the
tiny config with an FSDP-sharded state: both processes agree, the result equals one process
stepping the same global batches, and the checkpoint they wrote restores in one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import tiny_train_config, write_clips

import hificodec_jax
from hificodec_jax import input_pipeline, sharding
from hificodec_jax.checkpoint import Checkpointer
from hificodec_jax.train import build, make_sources, with_shardings

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")
STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat(state) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (simulated) devices")
def test_two_processes_train_like_one(tmp_path):
    data_dir, workdir = tmp_path / "audio", tmp_path / "run"
    data_dir.mkdir()
    write_clips(data_dir)
    port = _free_port()
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir or ""),
    )
    args = [str(port), str(data_dir), str(workdir), str(STEPS), "2"]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(i), "2", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0].decode(errors="replace") for p in procs]
    for i, out in enumerate(outputs):
        (tmp_path / f"worker_{i}.log").write_text(out)
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-6000:]
    s0 = dict(np.load(workdir / "state_0.npz"))
    s1 = dict(np.load(workdir / "state_1.npz"))
    assert s0.keys() == s1.keys() and int(s0[".step"]) == STEPS
    for k in s0:  # the two processes hold the same (gathered) state, bit for bit
        np.testing.assert_array_equal(s0[k], s1[k], err_msg=k)

    # One process, a 4-device data-parallel mesh, stepping the same global batches (process 0's
    # rows then process 1's, as make_array_from_process_local_data lays them out).
    cfg = tiny_train_config(str(data_dir), STEPS)
    mesh = sharding.make_mesh(jax.devices()[:4])
    _, init, abstract, step_fn = build(cfg, mesh)
    train_src, _ = make_sources(cfg, str(workdir))
    iters = [
        iter(
            input_pipeline.make_train_dataset(
                train_src,
                segment_size=cfg.data.segment_size,
                batch_size=cfg.batch_size // 2,
                seed=cfg.seed,
                process_index=i,
                process_count=2,
            )
        )
        for i in range(2)
    ]
    state = init(jax.random.key(cfg.seed))
    for _ in range(STEPS):
        parts = [next(it) for it in iters]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, _ = step_fn(state, sharding.shard_batch(batch, mesh))
    single = _flat(state)
    lr = cfg.optim.g.learning_rate
    for k, v in single.items():
        if np.issubdtype(v.dtype, np.floating):
            # Reduction order differs (2 x 2 devices vs 4); Adam's first steps are ~lr*sign(g).
            tol = 2 * STEPS * lr + 1e-5 * float(np.max(np.abs(v), initial=0.0))
            np.testing.assert_allclose(s0[k], v, rtol=1e-4, atol=tol, err_msg=k)
        else:
            np.testing.assert_array_equal(s0[k], v, err_msg=k)

    # The checkpoint both processes wrote (each its own shards) restores in this one process.
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    assert ckpt.latest_step() == STEPS
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    restored = _flat(ckpt.restore(with_shardings(abstract, shardings)))
    for k in s0:
        np.testing.assert_array_equal(restored[k], s0[k], err_msg=k)
    # Process 0's generator export loads and holds the trained generator.
    _, variables = hificodec_jax.load(str(workdir / "export"), inference=False)
    exported = jax.tree.leaves(variables["params"])
    assert len(exported) == len(jax.tree.leaves(state.g_params))
    for a, b in zip(exported, jax.tree.leaves(jax.device_get(state.g_params)), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=2 * STEPS * lr + 1e-5)
