"""launch/: every script is shellcheck-clean, --dry-run prints the expected commands, and the
pre-flight compile refuses a job that would not fit before anything is created."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

LAUNCH = REPO / "launch"
SCRIPTS = sorted(str(p) for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))


def _dry(script: str, *args: str) -> list[str]:
    """The commands ``script`` would run (``--dry-run``), without the pre-flight compile."""
    args = list(args)
    at = args.index("--") if "--" in args else len(args)  # before pass-through flags
    out = subprocess.run(
        ["bash", str(LAUNCH / script), *args[:at], "--no-preflight", "--dry-run", *args[at:]],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_are_shellcheck_clean():
    assert len(SCRIPTS) >= 5
    proc = subprocess.run(
        ["shellcheck", "-x", *SCRIPTS, str(REPO / ".ci" / "run")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tpu_up_dry_run():
    lines = _dry(
        "tpu.sh", "up", "--name", "codec", "--zone", "us-central2-b", "--accelerator", "v4-32",
        "--workdir", "gs://bucket/runs/a", "--data", "gs://bucket/data", "--spot", "--queued",
    )  # fmt: skip
    create, archive, scp, install, train = lines
    assert create.startswith("gcloud compute tpus queued-resources create codec --node-id=codec")
    assert "--accelerator-type=v4-32" in create and "--spot" in create
    assert "--runtime-version=tpu-ubuntu2204-base" in create
    assert archive.startswith("git -C ") and " archive " in archive
    assert scp.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in scp
    assert "--worker=all" in install and "jax\\[tpu\\]==" in install
    assert "hificodec_jax[train,gcs]" in install.replace("\\", "")  # training is an extra
    assert train.startswith(
        "gcloud compute tpus tpu-vm ssh codec --zone=us-central2-b --worker=all"
    )
    for piece in ("hificodec_jax.main", "--workdir=gs://bucket/runs/a", "--distributed",
                  "--config.data.tfds_dir=gs://bucket/data"):  # fmt: skip
        assert piece in train.replace("\\", ""), piece


def test_tpu_plain_vm_and_teardown_dry_run():
    (create,) = _dry("tpu.sh", "create", "--name", "n", "--zone", "z", "--accelerator", "v5p-8")
    assert create.startswith("gcloud compute tpus tpu-vm create n --zone=z")
    assert "--version=v2-alpha-tpuv5" in create and "--spot" not in create
    assert _dry("tpu.sh", "delete", "--name", "n", "--zone", "z") == [
        "gcloud compute tpus tpu-vm delete n --zone=z --quiet "
    ]
    (logs,) = _dry("tpu.sh", "logs", "--name", "n", "--zone", "z")
    assert "--worker=0" in logs and "train.log" in logs


def test_tpu_rejects_missing_arguments():
    proc = subprocess.run(
        ["bash", str(LAUNCH / "tpu.sh"), "train", "--name", "n", "--zone", "z", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--workdir is required" in proc.stderr


def test_tpu_passes_batch_size_and_config_overrides_to_the_trainer():
    *_, train = _dry(
        "tpu.sh", "up", "--name", "n", "--zone", "z", "--workdir", "gs://b/r",
        "--batch-size", "64", "--config.precision=bfloat16", "--config.mesh.fsdp", "2",
    )  # fmt: skip
    train = train.replace("\\", "")
    for piece in ("'--config.batch_size=64'", "'--config.precision=bfloat16'",
                  "'--config.mesh.fsdp=2'"):  # fmt: skip
        assert piece in train, piece


def test_gpu_and_slurm_dry_run():
    (cmd,) = _dry("gpu.sh", "--workdir", "runs/x", "--", "--config.batch_size=16")
    assert "-m hificodec_jax.main --config=configs/grvq4.py --workdir=runs/x" in cmd
    assert cmd.rstrip().endswith("--config.batch_size=16")
    (cmd,) = _dry("gpu.sh", "--workdir", "runs/x", "--batch-size", "32", "--config.seed=7")
    assert cmd.rstrip().endswith("--config.batch_size=32 --config.seed=7")
    *setup, _ = _dry("gpu.sh", "--install", "--workdir", "runs/x")
    assert "[train]" in setup[-1].replace("\\", "") and "jax[cuda12]==" in setup[-1].replace(
        "\\", ""
    )
    (sbatch,) = _dry("slurm.sh", "--nodes", "4", "--workdir", "/shared/r", "--partition", "gpu")
    assert sbatch.startswith("sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8")
    assert "--partition=gpu" in sbatch and sbatch.rstrip().endswith("launch/slurm_job.sbatch")
    (sbatch,) = _dry("slurm.sh", "--workdir", "/shared/r", "--batch-size", "128", "--config.seed=7")
    assert sbatch.rstrip().endswith(
        "launch/slurm_job.sbatch --config.seed=7 --config.batch_size=128"
    )
    job = (LAUNCH / "slurm_job.sbatch").read_text()
    assert "--requeue" in job and "--signal=TERM@120" in job and "--distributed" in job


def test_preflight_refuses_a_job_that_does_not_fit_before_creating_anything():
    # A fake 0.1 MiB of HBM per chip: the tiny config's state alone is larger, so the check
    # refuses after lowering the step, without a TPU compile.
    env = {**os.environ, "PYTHON": sys.executable, "HIFICODEC_AOT_CAPACITY_GIB": "0.0001"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        ["bash", str(LAUNCH / "tpu.sh"), "up", "--name", "n", "--zone", "z",
         "--accelerator", "v5litepod-4", "--config", "configs/tiny.py", "--workdir", "gs://b/r",
         "--batch-size", "64", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    if "pre-flight skipped" in proc.stdout:  # no [aot] extra here
        if os.environ.get("CI"):
            pytest.fail(f"{proc.stdout} (required when CI is set)")
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gcloud" not in proc.stdout  # nothing created, installed or started
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: pre-flight for v5litepod-4: train at batch 64 (16 per chip)")
    assert "it does not fit; not launching (--no-preflight skips this check)" in line


def test_tokenize_dry_runs():
    (gpu,) = _dry("gpu.sh", "tokenize", "--model", "m", "--input", "in.jsonl", "--out", "o",
                  "--", "--levels", "1")  # fmt: skip
    assert gpu.endswith("-m hificodec_jax.tokens --model m --input in.jsonl --out o --levels 1 ")
    (sbatch,) = _dry("slurm.sh", "tokenize", "--nodes", "3", "--model", "m", "--input", "/c",
                     "--out", "/shared/t", "--", "--unit-hours", "2")  # fmt: skip
    assert sbatch.startswith("sbatch --nodes=3 --ntasks-per-node=1")
    for piece in ("HFC_MODE=tokenize", "HFC_MODEL=m", "HFC_INPUT=/c", "HFC_OUT=/shared/t",
                  "HFC_EXTRA=--unit-hours\\ 2"):  # fmt: skip
        assert piece in sbatch, piece
    job = (LAUNCH / "slurm_job.sbatch").read_text()
    assert "-m hificodec_jax.tokens" in job and "--distributed" in job
    (tpu,) = _dry("tpu.sh", "tokenize", "--name", "n", "--zone", "z", "--model", "m",
                  "--input", "gs://b/m.jsonl", "--out", "/mnt/t")  # fmt: skip
    tpu = tpu.replace("\\", "")
    assert tpu.startswith("gcloud compute tpus tpu-vm ssh n --zone=z --worker=all")
    for piece in ("-m hificodec_jax.tokens", "--model=m", "--input=gs://b/m.jsonl",
                  "--out=/mnt/t", "--distributed"):  # fmt: skip
        assert piece in tpu, piece
    proc = subprocess.run(
        ["bash", str(LAUNCH / "gpu.sh"), "tokenize", "--model", "m", "--dry-run"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "tokenize needs --model, --input and --out" in proc.stderr
