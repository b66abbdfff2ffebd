"""Checkpointer: retention (last K + best by eval), restore == saved, refusal of non-finite
states, and clear errors for damaged checkpoints."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from hificodec_jax.training.checkpoint import EVAL_METRIC, Checkpointer, CheckpointError


def _state(seed: float):
    return {
        "w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) * seed,
        "step": jnp.asarray(int(seed), jnp.int32),
        "key": jax.random.key_data(jax.random.key(int(seed))),
    }


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(1.0))


def test_keeps_last_k_plus_best_by_eval(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2, save_every=1)
    evals = {2: 0.5, 4: 0.9}  # step 2 is the best eval; steps 1, 3, 5, 6 carry no metric
    for step in range(1, 7):
        metrics = {EVAL_METRIC: evals[step]} if step in evals else None
        assert ckpt.save(step, _state(step), metrics=metrics)
    ckpt.close()
    assert Checkpointer(str(tmp_path)).manager.all_steps() == [2, 5, 6]


def test_restore_equals_saved(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=1)
    ckpt.save(3, _state(3.0))
    ckpt.close()
    restored = Checkpointer(str(tmp_path)).restore(_abstract())
    for a, b in zip(jax.tree.leaves(_state(3.0)), jax.tree.leaves(restored), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_state_is_never_written(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=1)
    bad = _state(1.0)
    bad["w"] = bad["w"].at[0, 0].set(jnp.nan)
    assert not ckpt.save(1, bad)
    ckpt.close()
    assert ckpt.latest_step() is None


def test_damaged_checkpoint_gives_a_clear_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=1)
    ckpt.save(1, _state(1.0))
    ckpt.close()
    damaged = 0
    for root, _, files in os.walk(tmp_path / "1" / "state"):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:  # truncate every data and metadata file
                f.truncate(os.path.getsize(path) // 2)
            damaged += 1
    assert damaged
    with pytest.raises(CheckpointError, match="step 1"):
        Checkpointer(str(tmp_path)).restore(_abstract())


@pytest.mark.parametrize("verbosity, shown", [(0, False), (1, True)])
def test_orbax_info_lines_only_at_verbosity_1(tmp_path, caplog, verbosity, shown):
    # orbax logs dozens of INFO lines per save through absl; --verbosity=1 brings them back.
    caplog.set_level(logging.DEBUG)
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(verbosity)
    try:
        ckpt = Checkpointer(str(tmp_path), save_every=1)
        assert ckpt.save(1, _state(1.0))
        ckpt.close()
    finally:
        absl_logging.set_verbosity(before)
    orbax = [r for r in caplog.records if f"{os.sep}orbax{os.sep}" in r.pathname]
    assert bool(orbax) == shown
    assert Checkpointer(str(tmp_path)).latest_step() == 1


def test_missing_checkpoint_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Checkpointer(str(tmp_path)).restore(_abstract())


_KILLED_MID_SAVE = """
import os, signal, sys, time
import jax.numpy as jnp
from hificodec_jax.training.checkpoint import Checkpointer

ckpt = Checkpointer(sys.argv[1], save_every=1)
ckpt.save(1, {"w": jnp.full((__N__,), 1.0)})
ckpt.wait()
ckpt.save(2, {"w": jnp.full((__N__,), 2.0)})  # asynchronous: returns while files are written
# Killed once step 2's temporary directory exists (orbax may create it in its own thread).
deadline = time.time() + 60
while time.time() < deadline and not any(
    p.startswith("2") and p != "2" for p in os.listdir(sys.argv[1])
):
    time.sleep(0.001)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    n = 48 * 2**20 // 4  # 48 MB: the write is still in flight when the process dies
    script = _KILLED_MID_SAVE.replace("__N__", str(n))
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith("2") and p != "2"]
    assert leftovers and not (tmp_path / "2").exists()  # step 2 died half-written
    ckpt = Checkpointer(str(tmp_path), save_every=1)
    assert ckpt.latest_step() == 1
    abstract = {"w": jax.ShapeDtypeStruct((n,), jnp.float32)}
    np.testing.assert_array_equal(np.asarray(ckpt.restore(abstract)["w"]), 1.0)
    # ... and the run goes on: step 2 saved again over the debris restores.
    assert ckpt.save(2, {"w": jnp.full((n,), 3.0)})
    ckpt.close()
    restored = Checkpointer(str(tmp_path)).restore(abstract)
    np.testing.assert_array_equal(np.asarray(restored["w"]), 3.0)
