"""Two JAX processes on this machine (2 simulated CPU devices each, gloo collectives) train the
tiny config with an FSDP-sharded state for two steps. Checked: both processes hold the same
state, the discriminator side equals one process stepping the same global batches, the
checkpoint they wrote collectively restores in one process, process 0's export loads.

Known gap (``test_generator_and_codebooks_equal_single_process``, a strict xfail): the k-means
codebook initialisation on the first batch is decided by near-ties between latent frames, so
float rounding flips assignments (cluster sizes differ by ~25 %). This is not specific to
several processes: one process on the same 4-device mesh gives the same difference when the
host merely simulates 4 instead of 8 CPU devices (XLA's per-device thread pools round
differently). The generator and codebook state are therefore compared only up to that.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import smooth_adam, tiny_train_config, write_clips

import hificodec_jax
from hificodec_jax import input_pipeline, sharding
from hificodec_jax.checkpoint import Checkpointer
from hificodec_jax.train import build, make_sources, with_shardings

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")
STEPS = 2
FSDP = 2

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (simulated) devices")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat(state) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def _mismatches(got: dict, want: dict, initial: dict, step: int, prefixes=("",)) -> list[str]:
    """Leaves (under ``prefixes``) of ``got`` further from ``want`` than float rounding."""
    bad = {}
    for k, v in want.items():
        if not k.startswith(prefixes):
            continue
        # Collectives across processes (gloo) may sum in another order: rounding only.
        scale = float(np.max(np.abs(v), initial=0.0)) if v.dtype.kind == "f" else 0.0
        err = float(np.max(np.abs(got[k].astype(np.float64) - v), initial=0.0))
        moved = float(np.max(np.abs(v.astype(np.float64) - initial[k]), initial=0.0))
        if err > 1e-5 * scale + 1e-7:
            line = f"{k}: max err {err:.3g}, scale {scale:.3g}, change {moved:.3g}"
            bad.setdefault(k.split("[")[0], []).append(line)
    return [f"step {step} {g}: {len(v)} leaves, e.g. {v[:2]}" for g, v in bad.items()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The 2-process training run, and one process stepping the same global batches."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    data_dir, workdir = tmp / "audio", tmp / "run"
    data_dir.mkdir()
    write_clips(data_dir)
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir or ""),
    )
    args = [str(_free_port()), str(data_dir), str(workdir), str(STEPS), str(FSDP)]
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
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-6000:]
    states = [dict(np.load(workdir / f"state_{i}.npz")) for i in range(2)]

    # One process with the same (data 2, fsdp 2) mesh on 4 devices, stepping the same global
    # batches: process 0's rows then process 1's, as make_array_from_process_local_data lays
    # them out (the input pipelines are built exactly as each process builds its own).
    cfg = smooth_adam(tiny_train_config(str(data_dir), STEPS))
    cfg.mesh.fsdp, cfg.mesh.fsdp_min_size = FSDP, 0
    mesh = sharding.make_mesh(jax.devices()[:4], fsdp=FSDP)
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
    history = [_flat(state)]
    for _ in range(STEPS):
        parts = [next(it) for it in iters]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, _ = step_fn(state, sharding.shard_batch(batch, mesh))
        history.append(_flat(state))
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    restore = lambda step: _flat(ckpt.restore(with_shardings(abstract, shardings), step=step))  # noqa: E731
    return dict(workdir=workdir, states=states, history=history, restore=restore, ckpt=ckpt)


def test_two_processes_train_and_checkpoint(run):
    s0, s1 = run["states"]
    history = run["history"]
    assert s0.keys() == s1.keys() == history[0].keys() and int(s0[".step"]) == STEPS
    for k in s0:  # the two processes hold the same (gathered) state, bit for bit
        np.testing.assert_array_equal(s0[k], s1[k], err_msg=k)
    params = [k for k in s0 if "params" in k]
    moved = [k for k in params if np.any(history[0][k] != s0[k])]
    assert len(moved) > len(params) // 2  # training happened
    # The discriminator side (params, Adam moments, spectral-norm vectors) equals the single
    # process at every step (step 1 from the checkpoint the run kept).
    d_side = (".d_params", ".d_opt_state", ".spectral", ".step")
    step1 = run["restore"](1)
    report = _mismatches(step1, history[1], history[0], 1, d_side)
    report += _mismatches(s0, history[STEPS], history[0], STEPS, d_side)
    assert not report, "\n".join(report)
    # The checkpoint both processes wrote (each its own shards) restores in this one process.
    assert run["ckpt"].latest_step() == STEPS
    restored = run["restore"](STEPS)
    for k in s0:
        np.testing.assert_array_equal(restored[k], s0[k], err_msg=k)
    # Process 0's generator export loads and holds the trained generator.
    _, variables = hificodec_jax.load(str(run["workdir"] / "export"), inference=False)
    exported = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    assert len(exported) == len([k for k in s0 if k.startswith(".g_params")])
    for path, x in exported:
        k = ".g_params" + jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(x), s0[k], err_msg=k)


@pytest.mark.xfail(
    strict=True, reason="k-means init near-ties flip under rounding (also within one process)"
)
def test_generator_and_codebooks_equal_single_process(run):
    s0, history = run["states"][0], run["history"]
    report = _mismatches(run["restore"](1), history[1], history[0], 1)
    report += _mismatches(s0, history[STEPS], history[0], STEPS)
    assert not report, "\n".join(report)
