"""The training loop end to end on the tiny config: a run preempted by SIGTERM checkpoints and
resumes bit-exactly (N straight == preempted at k + restart), bad files are skipped,
TensorBoard events and the generator export are written, the log says what a user needs
(epoch length, evaluation, a closing line; no orbax chatter) and a finished job reruns as a
no-op."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import soundfile as sf
from helpers import REPO, TRAIN_TEST_OVERRIDES, tiny_train_config, write_clips, xla_flags

import hificodec_jax
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.training.checkpoint import Checkpointer
from hificodec_jax.training.loop import train_and_evaluate
from hificodec_jax.training.preemption import PREEMPTED_EXIT_CODE


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # A fixed folder name: the held-out split hashes parent/name, and "data" holds out a clip.
    d = tmp_path_factory.mktemp("train_test") / "data"
    d.mkdir()
    write_clips(d)
    sf.write(d / "stereo_22k.wav", np.stack([synthetic_speech(22050, 0.4)] * 2, 1), 22050)
    sf.write(d / "short.wav", synthetic_speech(16000, 0.1, seed=9), 16000)  # zero-padded crop
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    sf.write(d / "silent.wav", np.zeros(8000, np.float32), 16000)
    sf.write(d / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    return str(d)


def _main_cmd(data_dir, workdir, total_steps):
    """``python -m hificodec_jax.main`` with the overrides that make tiny_train_config."""
    return [
        sys.executable, "-m", "hificodec_jax.main",
        f"--config={REPO / 'configs' / 'tiny.py'}",
        *(f"--config.{k}={v!r}" for k, v in TRAIN_TEST_OVERRIDES.items()),
        f"--config.data.dir={data_dir}",
        f"--config.total_steps={total_steps}",
        "--config.log_every=1",
        f"--workdir={workdir}",
        "--logtostderr",
    ]  # fmt: skip


def _sigterm_after_step(cmd, log_path, step: int) -> int:
    """Run ``cmd``, send SIGTERM once it logged ``step``; its exit status."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(8),
        JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir or ""),
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 600
            while f"step {step}/".encode() not in log_path.read_bytes():
                assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
                assert time.time() < deadline, "training did not start"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=300)
        finally:
            proc.kill()


def test_preempted_run_resumes_bit_exactly(data_dir, tmp_path, caplog):
    # A training process gets SIGTERM (a spot VM going away) after step 2: it finishes the
    # step it is in, writes a checkpoint and exits with 143; nothing is exported.
    log = tmp_path / "preempted.log"
    rc = _sigterm_after_step(_main_cmd(data_dir, tmp_path / "b", 1000), log, 2)
    text = log.read_text(errors="replace")
    assert rc == PREEMPTED_EXIT_CODE, text[-4000:]
    last = max(int(s) for s in re.findall(r"step (\d+)/1000", text))
    assert f"preempted: stopped after step {last}" in text
    assert Checkpointer(str(tmp_path / "b" / "checkpoints")).latest_step() == last >= 2
    assert not (tmp_path / "b" / "export").exists()
    # Restarting resumes from that step and continues exactly like an uninterrupted run: the
    # same batches (none lost or repeated), the same parameters, optimizer and codebook state.
    total = last + 2
    caplog.set_level(logging.INFO, logger="absl")
    resumed = train_and_evaluate(tiny_train_config(data_dir, total), str(tmp_path / "b"))
    assert f"resumed from step {last}" in caplog.text
    straight = train_and_evaluate(tiny_train_config(data_dir, total), str(tmp_path / "a"))
    assert int(straight.step) == int(resumed.step) == total
    for a, b in zip(
        jax.tree.leaves(jax.device_get(straight)),
        jax.tree.leaves(jax.device_get(resumed)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The log: the epoch length and decay interval at start, none of orbax's INFO lines (its
    # warnings stay, e.g. a save that waited over 1 s for the previous one on a busy machine),
    # evaluation tags named like the training ones, one closing line saying where things are.
    text = caplog.text
    assert re.search(r"epoch: \d+ training clips // batch 8 = 1 steps; learning rate x0.98 "
                     r"every 1 \(G\) / 1 \(D\) steps", text)  # fmt: skip
    orbax = [r for r in caplog.records if f"{os.sep}orbax{os.sep}" in r.pathname]
    assert not [r for r in orbax if r.levelno <= logging.INFO], orbax
    evals = [r.args[1] for r in caplog.records if r.msg.startswith("eval at step")]
    streams = {f"eval/perplexity_r{r}g{g}" for r in (0, 1) for g in (0, 1)}
    assert evals and all(
        set(m) == {"eval/mel_distance", "eval/dead_codes"} | streams for m in evals
    )
    done = f"done: {total} steps, final g_total="
    assert done in text and f"exported to {tmp_path / 'a' / 'export'}" in text
    assert f"tensorboard --logdir {tmp_path / 'a' / 'tensorboard'}" in text
    # Running the finished job again does nothing (no compile) and returns its final state.
    caplog.clear()
    again = train_and_evaluate(tiny_train_config(data_dir, total), str(tmp_path / "a"))
    assert (
        f"already at step {total} (total_steps {total}): nothing to do (to train longer, run "
        "the same command with a larger --config.total_steps)" in caplog.text
    )
    assert "compiled the" not in caplog.text and "done:" not in caplog.text
    for a, b in zip(
        jax.tree.leaves(jax.device_get(again)),
        jax.tree.leaves(jax.device_get(straight)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    events = os.listdir(tmp_path / "a" / "tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)
    assert Checkpointer(str(tmp_path / "a" / "checkpoints")).latest_step() == total
    # The generator export loads in one call and decodes.
    codec, variables = hificodec_jax.load(str(tmp_path / "b" / "export"))
    wav_hat = codec.apply(variables, np.zeros((1, 10, 4), np.int32), method="decode")
    assert wav_hat.shape == (1, 400) and np.all(np.isfinite(wav_hat))
    # The corrupt, silent and NaN files in the data directory were skipped, not fatal.
    bad = " ".join(line for line in text.splitlines() if "skipping bad audio" in line)
    assert "corrupt" in bad and "silent" in bad and "nan" in bad
