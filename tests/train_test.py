"""The training loop end to end on the tiny config: bad files are skipped, checkpoints resume
bit-exactly (4 steps straight == 2 + restart + 2), TensorBoard events are written."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import soundfile as sf
from helpers import tiny_train_config, write_clips

import hificodec_jax
from hificodec_jax import input_pipeline
from hificodec_jax.checkpoint import Checkpointer
from hificodec_jax.demo_audio import synthetic_speech
from hificodec_jax.train import train_and_evaluate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    write_clips(d)
    sf.write(d / "stereo_22k.wav", np.stack([synthetic_speech(22050, 0.4)] * 2, 1), 22050)
    sf.write(d / "short.wav", synthetic_speech(16000, 0.1, seed=9), 16000)  # zero-padded crop
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    sf.write(d / "silent.wav", np.zeros(8000, np.float32), 16000)
    sf.write(d / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    return str(d)


def test_resume_is_bit_exact_and_writes_events(data_dir, tmp_path):
    straight = train_and_evaluate(tiny_train_config(data_dir, 4), str(tmp_path / "a"))
    train_and_evaluate(tiny_train_config(data_dir, 2), str(tmp_path / "b"))
    resumed = train_and_evaluate(
        tiny_train_config(data_dir, 4), str(tmp_path / "b")
    )  # restarts at 2
    assert int(straight.step) == int(resumed.step) == 4
    for a, b in zip(
        jax.tree.leaves(jax.device_get(straight)),
        jax.tree.leaves(jax.device_get(resumed)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    events = os.listdir(tmp_path / "a" / "tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)
    assert Checkpointer(str(tmp_path / "a" / "checkpoints")).latest_step() == 4
    # The generator export loads in one call and decodes.
    codec, variables = hificodec_jax.load(str(tmp_path / "b" / "export"))
    wav_hat = codec.apply(variables, np.zeros((1, 10, 4), np.int32), method="decode")
    assert wav_hat.shape == (1, 400) and np.all(np.isfinite(wav_hat))
    # The corrupt, silent and NaN files in the data directory were skipped, not fatal.
    bad = " ".join(input_pipeline.bad_file_stats())
    assert "corrupt" in bad and "silent" in bad and "nan" in bad
