"""SIGTERM to a running training process: it writes a checkpoint of the step it reached and
exits with status 143; the next start resumes from that step on the exact next batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
from helpers import REPO, write_clips

from hificodec_jax.checkpoint import Checkpointer
from hificodec_jax.preemption import PREEMPTED_EXIT_CODE


def _main_cmd(data_dir, workdir, total_steps):
    return [
        sys.executable, "-m", "hificodec_jax.main",
        f"--config={REPO / 'configs' / 'tiny.py'}",
        "--config.disc.families=('stft',)",
        f"--config.data.dir={data_dir}",
        f"--config.total_steps={total_steps}",
        "--config.log_every=1",
        "--config.eval_every=100000",
        "--config.checkpoint_every=100000",
        f"--workdir={workdir}",
        "--logtostderr",
    ]  # fmt: skip


def _env():
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir or ""),
    )


def _iterator_position(workdir, step) -> int:
    """Clips consumed by the data iterator saved with checkpoint ``step`` (8 per batch)."""
    root = os.path.join(workdir, "checkpoints", str(step), "data_iter")
    (name,) = [f for f in os.listdir(root) if f.endswith(".json")]
    with open(os.path.join(root, name)) as f:
        return int(json.load(f)["next_index"])


def test_sigterm_checkpoints_and_resume_continues(tmp_path):
    data_dir, workdir = tmp_path / "audio", tmp_path / "run"
    data_dir.mkdir()
    write_clips(data_dir)
    log = open(tmp_path / "log.txt", "w+b")  # noqa: SIM115
    proc = subprocess.Popen(
        _main_cmd(data_dir, workdir, 1000), env=_env(), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 600
        while not re.search(rb"step 2/1000", (tmp_path / "log.txt").read_bytes()):
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == PREEMPTED_EXIT_CODE
    finally:
        proc.kill()
    text = (tmp_path / "log.txt").read_text(errors="replace")
    last = max(int(s) for s in re.findall(r"step (\d+)/1000", text))
    assert "preempted: stopped after step" in text
    ckpt_dir = str(workdir / "checkpoints")
    assert Checkpointer(ckpt_dir).latest_step() == last >= 2
    assert _iterator_position(workdir, last) == 8 * last  # one batch per step: none lost/repeated
    assert not (workdir / "export").exists()  # not finished: no export

    # The next start resumes at `last`, runs the remaining step and finishes normally.
    done = subprocess.run(
        _main_cmd(data_dir, workdir, last + 1), env=_env(), capture_output=True, timeout=600
    )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, out[-4000:]
    assert f"resumed from step {last}" in out
    assert re.search(rf"step {last + 1}/{last + 1}", out)
    assert Checkpointer(ckpt_dir).latest_step() == last + 1
    assert _iterator_position(workdir, last + 1) == 8 * (last + 1)
    assert (workdir / "export").exists()
