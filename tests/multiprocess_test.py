"""Two JAX processes on this machine (2 simulated CPU devices each, gloo collectives) train the
tiny config with an FSDP-sharded state for two steps. Checked: both processes hold the same
state; the whole state (discriminator, generator, EMA codebooks, optimizer moments) equals one
process stepping the same global batches; the checkpoint they wrote collectively restores in
one process; process 0's export loads.

Tolerances: parameters, codebooks and the discriminator's moments agree to 1e-5 of each leaf's
scale. The generator's Adam moments get 1e-3: XLA CPU splits the long reductions of the
generator's weight-gradient convolutions differently depending on how many devices the process
hosts, so even one process on the same 4-device mesh moves them by up to 3.7e-5 of their scale
after one step when the host simulates 8 instead of 4 CPU devices (measured; deterministic for
a given device count), and the gradients of the weight-norm gains cancel heavily (2.1e-4 seen
after two steps here). A wrong batch layout, a missing or doubled reduction gives errors of
order 1.
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


def _mismatches(
    got: dict, want: dict, initial: dict, step: int, prefixes=("",), rtol: float = 1e-5
) -> list[str]:
    """Leaves (under ``prefixes``) of ``got`` further from ``want`` than ``rtol`` of their
    scale (float rounding: collectives across processes may sum in another order)."""
    bad = {}
    for k, v in want.items():
        if not k.startswith(prefixes):
            continue
        scale = float(np.max(np.abs(v), initial=0.0)) if v.dtype.kind == "f" else 0.0
        err = float(np.max(np.abs(got[k].astype(np.float64) - v), initial=0.0))
        moved = float(np.max(np.abs(v.astype(np.float64) - initial[k]), initial=0.0))
        if err > rtol * scale + 1e-7:
            line = f"{k}: max err {err:.3g}, scale {scale:.3g}, change {moved:.3g}"
            bad.setdefault(k.split("[")[0], []).append(line)
    return [f"step {step} {g}: {len(v)} leaves, e.g. {v[:2]}" for g, v in bad.items()]


def _single_process_reference(data_dir, workdir):
    """One process with the same (data 2, fsdp 2) mesh on 4 devices stepping the same global
    batches: process 0's rows then process 1's, as make_array_from_process_local_data lays
    them out (the input pipelines are built exactly as each process builds its own).
    Returns the flat state before each step and after the last, the mesh, the abstract state."""
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
    return history, mesh, abstract


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
    try:
        # Meanwhile (they mostly compile, a core each): the single-process reference.
        history, mesh, abstract = _single_process_reference(data_dir, workdir)
        outputs = [p.communicate(timeout=900)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-6000:]
    states = [dict(np.load(workdir / f"state_{i}.npz")) for i in range(2)]
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


def test_generator_and_codebooks_equal_single_process(run):
    """The generator side (params, Adam moments) and the EMA codebooks (k-means initialised on
    the first global batch, then EMA-updated) equal the single process at both steps."""
    s0, history = run["states"][0], run["history"]
    step1 = run["restore"](1)
    report = []
    for step, got in ((1, step1), (STEPS, s0)):
        report += _mismatches(got, history[step], history[0], step, (".vq", ".g_params"))
        report += _mismatches(got, history[step], history[0], step, (".g_opt_state",), rtol=1e-3)
    assert not report, "\n".join(report)
    # The codebooks were initialised (k-means) and moved by the EMA in both runs.
    init_flag = [k for k in s0 if k.startswith(".vq") and k.endswith("['initialized']")]
    assert init_flag and all(bool(s0[k]) for k in init_flag)
    books = [k for k in s0 if k.startswith(".vq") and k.endswith("['codebooks']")]
    assert books and all(np.any(s0[k] != history[0][k]) for k in books)
