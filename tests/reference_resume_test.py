"""Reference checkpoint pairs end to end: continuing a reference run in ``main``
(``config.resume_reference``) and ``benchmarks/reference_step.py``'s command line.

A tiny academicodec-recipe model's weights, spectral-norm vectors and Adam states are written
as torch zip checkpoints in the reference's ``g_`` / ``do_`` layout and read back by the safe
reader; the trainer started with ``resume_reference`` holds exactly those values, both Adam
states (moments and count) and the step number.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
from helpers import REPO, noise, tiny_train_config, write_clips
from training_parity_test import with_optimizers

import hificodec_jax
from hificodec_jax import factory
from hificodec_jax.reference import parity, resume, training_import
from hificodec_jax.reference.convert import flax_to_torch
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


TINY = str(REPO / "configs" / "tiny.py")


def _moments(key, value):
    return 0.25 * value, np.square(value) + 2.0


def _pickle(obj, storages: list) -> bytes:
    """Protocol-2 pickle opcodes of ``obj`` as ``torch.save`` writes it (tensors: persistent
    storage ids, ``torch._utils._rebuild_tensor_v2``); arrays are appended to ``storages``."""
    if isinstance(obj, dict):
        items = b"".join(_pickle(k, storages) + _pickle(v, storages) for k, v in obj.items())
        return b"}(" + items + b"u"
    if isinstance(obj, list | tuple):
        inner = b"".join(_pickle(x, storages) for x in obj)
        return b"](" + inner + b"e" if isinstance(obj, list) else b"(" + inner + b"t"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, str):
        return b"X" + struct.pack("<I", len(obj.encode())) + obj.encode()
    a = np.array(obj, np.float32)  # C order (0-d stays 0-d)
    key = str(len(storages))
    storages.append(a)
    pid = b"(" + _pickle("storage", []) + b"ctorch\nFloatStorage\n" + _pickle(key, [])
    pid += _pickle("cpu", []) + _pickle(a.size, []) + b"tQ"
    strides = tuple(int(np.prod(a.shape[i + 1 :])) for i in range(a.ndim))
    args = pid + _pickle(0, []) + _pickle(tuple(a.shape), []) + _pickle(strides, [])
    args += b"\x89ccollections\nOrderedDict\n)R"  # requires_grad, backward_hooks
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"


def write_pth(path, obj) -> None:
    """``obj`` (dicts, lists, numbers, strings, float32 arrays) as a torch zip checkpoint."""
    storages: list = []
    pkl = b"\x80\x02" + _pickle(obj, storages) + b"."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", b"little")
        for i, a in enumerate(storages):
            zf.writestr(f"archive/data/{i}", a.astype("<f4").tobytes())


def _tiny_pair(cfg, *, steps: int, step: int):
    """A reference-layout ``(g_, do_)`` pair for ``cfg``'s model (every discriminator family):
    its variables, numpy-filled, and Adam states with moments ``_moments`` at ``step``."""
    cfg.model.quantizer["update"] = "loss"  # the academicodec recipe
    cfg.disc.families = ("mpd", "msd", "stft")  # every family of a do_ file (tiny widths)
    codec = factory.build_codec(cfg, weight_norm=True)
    discs = factory.build_discriminators(cfg)
    wav = jax.ShapeDtypeStruct((1, cfg.data.segment_size), np.float32)
    g_vars = _filled(jax.eval_shape(codec.init, jax.random.key(0), wav), 1)
    d_vars = _filled(jax.eval_shape(discs.init, jax.random.key(0), wav), 2)
    g = flax_to_torch(g_vars, codec)
    d = training_import.discriminators_to_torch(d_vars["params"], d_vars["spectral"])
    do = with_optimizers(g, d, _moments if step else None, step=step, steps=steps)
    return g, do, g_vars, d_vars


def test_main_resumes_a_reference_run(tmp_path):
    cfg = tiny_train_config(str(tmp_path / "clips"), total_steps=0)
    g, do, g_vars, d_vars = _tiny_pair(cfg, steps=40, step=41)
    write_pth(tmp_path / "g_00000040", g)  # read back by the safe reader, like a real pair
    write_pth(tmp_path / "do_00000040", do)
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
        resume.reference_paths("only_one.pth")
    (tmp_path / "g.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing_do.pth"):
        resume.reference_paths(f"{tmp_path / 'g.pth'},{tmp_path / 'missing_do.pth'}")


def test_reference_step_command_line(tmp_path):
    """``benchmarks/reference_step.py G_PTH DO_PTH AUDIO_NPY --config ...`` on real ``.pth``
    files (a tiny academicodec model) prints one JSON line with the fixture's scalar names;
    its terms add up as the objective does."""
    cfg = hificodec_jax.load_config(f"{TINY}:academicodec")
    g, do, _, _ = _tiny_pair(cfg, steps=0, step=0)
    write_pth(tmp_path / "g.pth", g)
    write_pth(tmp_path / "do.pth", do)
    np.save(tmp_path / "audio.npy", noise((2, 4000), seed=3))
    argv = [str(tmp_path / n) for n in ("g.pth", "do.pth", "audio.npy")]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "reference_step.py"), *argv,
         "--config", f"{TINY}:academicodec"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(line) == parity.SCALAR_NAMES
    assert all(math.isfinite(v) for v in line.values())
    for p in ("init", "step"):
        d = sum(line[f"{p}/d_{f}"] for f in ("mpd", "msd", "stft"))
        assert line[f"{p}/d_total"] == pytest.approx(d, rel=1e-6)
        mel = 45 * line[f"{p}/mel_main"] + line[f"{p}/mel_512"] + line[f"{p}/mel_256"]
        assert line[f"{p}/mel"] == pytest.approx(mel, rel=1e-6)
        parts = [line[f"{p}/{k}_{f}"] for k in ("fm", "adv") for f in ("mpd", "msd", "stft")]
        total = sum(parts) + line[f"{p}/mel"] + 10 * line[f"{p}/quantizer"]
        assert line[f"{p}/g_total"] == pytest.approx(total, rel=1e-5)
    assert line["step/d_total"] == line["init/d_total"]  # one D phase, before D's step
    assert line["step/adv_msd"] != line["init/adv_msd"]  # the G phase sees the updated D
