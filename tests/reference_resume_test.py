"""Continuing a reference training run in ``main`` (``config.resume_reference``).

A tiny academicodec-recipe model's weights, spectral-norm vectors and Adam states are written
in the reference's ``g_`` / ``do_`` layout; the trainer started with ``resume_reference`` holds
exactly those values, both Adam states (moments and count) and the step number.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from helpers import tiny_train_config, write_clips
from training_parity_test import with_optimizers

from hificodec_jax import factory
from hificodec_jax.codec.convert import flax_to_torch
from hificodec_jax.training import reference_import, reference_resume
from hificodec_jax.training.loop import train_and_evaluate


def _filled(shapes, seed: int):
    """numpy values shaped like ``shapes`` (unit vectors for the spectral-norm ``u``/``v``)."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        a = rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype)
        if path[0].key == "spectral":
            a /= np.linalg.norm(a)
        return a

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _moments(key, value):
    return 0.25 * value, np.square(value) + 2.0


def test_main_resumes_a_reference_run(tmp_path, monkeypatch):
    cfg = tiny_train_config(str(tmp_path / "clips"), total_steps=0)
    cfg.model.quantizer["update"] = "loss"  # the academicodec recipe
    cfg.disc.families = ("mpd", "msd", "stft")  # every family of a do_ file (tiny widths)
    codec = factory.build_codec(cfg, weight_norm=True)
    discs = factory.build_discriminators(cfg)
    wav = jax.ShapeDtypeStruct((1, cfg.data.segment_size), np.float32)
    g_vars = _filled(jax.eval_shape(codec.init, jax.random.key(0), wav), 1)
    d_vars = _filled(jax.eval_shape(discs.init, jax.random.key(0), wav), 2)
    g = flax_to_torch(g_vars, codec)
    d = reference_import.discriminators_to_torch(d_vars["params"], d_vars["spectral"])
    do = with_optimizers(g, d, _moments, step=41, steps=40)
    files = {"g_00000040": g, "do_00000040": do}
    for name in files:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(reference_resume, "load_pth", lambda p: files[os.path.basename(p)])
    (tmp_path / "clips").mkdir()
    write_clips(tmp_path / "clips")
    cfg.resume_reference = f"{tmp_path / 'g_00000040'},{tmp_path / 'do_00000040'}"
    cfg.total_steps = 41  # the reference resumes at steps + 1: nothing left to train

    state = jax.tree.map(np.asarray, train_and_evaluate(cfg, str(tmp_path / "run")))

    assert int(state.step) == 41
    for got, want in ((state.g_params, g_vars["params"]), (state.d_params, d_vars["params"])):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    spectral = zip(
        jax.tree.leaves(state.spectral), jax.tree.leaves(d_vars["spectral"]), strict=True
    )
    for a, b in spectral:
        np.testing.assert_array_equal(a, b)
    for opt, params in ((state.g_opt_state, state.g_params), (state.d_opt_state, state.d_params)):
        adam, schedule = opt[0]
        assert int(adam.count) == 41 and int(schedule.count) == 41
        for p, m, v in zip(*(jax.tree.leaves(t) for t in (params, adam.mu, adam.nu)), strict=True):
            np.testing.assert_array_equal(m, 0.25 * p)
            np.testing.assert_array_equal(v, np.square(p) + 2.0)


def test_resume_reference_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="G_PTH,DO_PTH"):
        reference_resume.reference_paths("only_one.pth")
    (tmp_path / "g.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing_do.pth"):
        reference_resume.reference_paths(f"{tmp_path / 'g.pth'},{tmp_path / 'missing_do.pth'}")
