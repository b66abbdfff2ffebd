"""Two JAX processes on this machine (2 simulated CPU devices each, gloo collectives) train the
tiny config with an FSDP-sharded state for two steps. Checked: both processes hold the same
state; one process on the same (data 2, fsdp 2) mesh, stepping the same global batch from the
state the two processes checkpointed after step 1, reaches their step-2 state (discriminator,
generator, EMA codebooks, optimizer moments); the first step's k-means initialisation saw the
global batch; the checkpoint they wrote collectively restores in one process; process 0's
export loads.

Why step 2 is compared from the run's own step-1 state: the first step initialises the codebooks
by k-means on the batch's frames, which is chaotic under float rounding. Where the two layouts
round differently (as under the tests' cheaper XLA code generation), cluster sizes and codebooks
differ visibly, and everything downstream (the generator's update, its Adam moments) moves with
them. From the same initialised codebooks the EMA step is smooth in its inputs (as in
``train_step_test``'s FSDP test).

Tolerances: parameters, codebooks and the discriminator's moments agree to 1e-5 of each leaf's
scale. The generator's Adam moments get 1e-3: XLA CPU splits the long reductions of the
generator's weight-gradient convolutions differently depending on how many devices the process
hosts, so even one process on the same 4-device mesh moves them slightly when the host simulates 8
instead of 4 CPU devices (deterministic for a given device count), and the gradients of the
weight-norm gains cancel heavily (docs/performance-notes.md gives the spreads). A wrong batch
layout, a missing or doubled reduction gives errors of order 1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import smooth_adam, tiny_train_config, write_clips, xla_flags

import hificodec_jax
from hificodec_jax.data import input_pipeline
from hificodec_jax.data.sources import make_sources, steps_per_epoch
from hificodec_jax.factory import hop_length
from hificodec_jax.training import sharding
from hificodec_jax.training.checkpoint import Checkpointer
from hificodec_jax.training.compilation import build, with_shardings

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
    """One process with the same (data 2, fsdp 2) mesh on 4 devices: the global batches the two
    processes step on (process 0's rows then process 1's, as make_array_from_process_local_data
    lays them out; the input pipelines are built exactly as each process builds its own), and
    this process's own first step. Returns the batches, the flat state before and after that
    step, the mesh, the abstract state and the step function."""
    cfg = smooth_adam(tiny_train_config(str(data_dir), STEPS))
    cfg.mesh.fsdp, cfg.mesh.fsdp_min_size = FSDP, 0
    mesh = sharding.make_mesh(jax.devices()[:4], fsdp=FSDP)
    train_src, _ = make_sources(cfg, str(workdir))
    _, init, abstract, step_fn = build(cfg, mesh, steps_per_epoch(len(train_src), cfg.batch_size))
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
    batches = []
    for _ in range(STEPS):
        parts = [next(it) for it in iters]
        batches.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    state = init(jax.random.key(cfg.seed))
    history = [_flat(state)]
    state, _ = step_fn(state, sharding.shard_batch(batches[0], mesh))
    history.append(_flat(state))
    return batches, history, mesh, abstract, step_fn


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The 2-process training run, and one process stepping the same global batches."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    data_dir, workdir = tmp / "audio", tmp / "run"
    data_dir.mkdir()
    write_clips(data_dir)
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags(2),
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
        batches, history, mesh, abstract, step_fn = _single_process_reference(data_dir, workdir)
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
    # This process steps on from the state the two processes checkpointed after step STEPS - 1.
    state = ckpt.restore(abstract, step=STEPS - 1)
    state, _ = step_fn(state, sharding.shard_batch(batches[STEPS - 1], mesh))
    return dict(
        workdir=workdir,
        states=states,
        history=history,
        stepped_on=_flat(state),
        restore=restore,
        ckpt=ckpt,
    )


def test_two_processes_train_and_checkpoint(run):
    s0, s1 = run["states"]
    history = run["history"]
    assert s0.keys() == s1.keys() == history[0].keys() and int(s0[".step"]) == STEPS
    for k in s0:  # the two processes hold the same (gathered) state, bit for bit
        np.testing.assert_array_equal(s0[k], s1[k], err_msg=k)
    params = [k for k in s0 if "params" in k]
    moved = [k for k in params if np.any(history[0][k] != s0[k])]
    assert len(moved) > len(params) // 2  # training happened
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


def test_step_from_the_runs_state_equals_single_process(run):
    """From the state the two processes checkpointed after step 1, one step in one process gives
    their step-2 state: discriminator (params, Adam moments, spectral-norm vectors), generator
    (params, Adam moments) and the EMA codebook statistics (global-batch sums)."""
    s0, got, initial = run["states"][0], run["stepped_on"], run["history"][0]
    everything_else = tuple({k.split("[")[0] for k in s0} - {".g_opt_state"})
    report = _mismatches(s0, got, initial, STEPS, everything_else)
    report += _mismatches(s0, got, initial, STEPS, (".g_opt_state",), rtol=1e-3)
    assert not report, "\n".join(report)
    assert int(got[".step"]) == int(s0[".step"]) == STEPS
    # The step moved the codebooks (EMA) and the parameters of both networks.
    step1 = run["restore"](STEPS - 1)
    for prefix in (".vq", ".g_params", ".d_params"):
        keys = [k for k in s0 if k.startswith(prefix) and s0[k].dtype.kind == "f"]
        assert keys and any(np.any(s0[k] != step1[k]) for k in keys), prefix


def test_first_step_initialises_codebooks_on_the_global_batch(run):
    """Step 1 initialises the codebooks by k-means on all frames of the global batch (both
    processes' rows) in the two-process run as in one process. The EMA cluster sizes of each
    (level, group) then sum to the global batch's frame count: k-means' sizes and the batch's
    counts each do. A dead-code restart would lift a code below the threshold (1 frame) to it,
    so the sum may exceed the count by less than one frame per code (none was restarted in the
    runs seen; one process's half of the batch would give about half the count). The
    centroids themselves are chaotic in the rounding (above), so they are compared loosely: 5 %
    of their scale, where the two runs agree to 4e-8 of 0.24 with XLA's default CPU codegen and
    to 7e-3 with the cheaper flags at optimisation level 1 (the tests now use level 0, where
    this test passed in the three runs made); centroids of other frames differ
    by the scale itself."""
    cfg = tiny_train_config("", STEPS)
    frames = cfg.batch_size * cfg.data.segment_size // hop_length(cfg)
    step1, ref = run["restore"](1), run["history"][1]
    q = ".vq['quantizer']"
    for state in (step1, ref):
        assert bool(state[q + "['initialized']"])
        sizes = state[q + "['cluster_size']"]
        total = sizes.sum(-1)
        assert np.all(total >= frames * (1 - 1e-5)), total
        assert np.all(total < frames + sizes.shape[-1]), total
    got, want = step1[q + "['codebooks']"], ref[q + "['codebooks']"]
    assert np.max(np.abs(got - want)) <= 0.05 * np.max(np.abs(want))
    assert np.max(np.abs(want - run["history"][0][q + "['codebooks']"])) > 0.5 * np.max(
        np.abs(want)
    )  # k-means moved them from their random init
