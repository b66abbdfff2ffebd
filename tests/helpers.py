"""Shared test helpers: repo paths, configs, small deterministic signals."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import numpy as np

import hificodec_jax

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # configs/ as a package, from any working directory
from configs.tiny import SMALL_STEP_OVERRIDES  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def config(name: str):
    """``configs/<name>.py``'s ``get_config()``."""
    return hificodec_jax.load_config(str(REPO / "configs" / f"{name}.py"))


def xla_flags(devices: int) -> str:
    """This session's ``XLA_FLAGS`` (see conftest) with ``devices`` simulated CPU devices, for
    the tests' JAX subprocesses."""
    others = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    return " ".join([f"--xla_force_host_platform_device_count={devices}", *others.split()])


def make_weights_module():
    """The fixtures' numpy-only ``make_weights`` recipe (reference-layout synthetic weights)."""
    path = DATA / "academicodec" / "make_weights.py"
    spec = importlib.util.spec_from_file_location("make_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noise(shape, seed: int = 0, scale: float = 0.5) -> np.ndarray:
    """Uniform float32 noise in [-scale, scale]."""
    return np.random.default_rng(seed).uniform(-scale, scale, shape).astype(np.float32)


def fast_init(codec, num_samples: int, seed: int = 0):
    """Variables with ``codec.init``'s structure, drawn with numpy (torch-like scales).

    ``codec.init`` compiles one random op per parameter shape, which costs tens of seconds on
    a 2-core CI machine; tests that do not test initialisation itself use this instead.
    """
    import jax

    shapes = jax.eval_shape(
        codec.init, jax.random.key(0), jax.ShapeDtypeStruct((1, num_samples), np.float32)
    )
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if s.dtype == bool:
            return np.zeros(s.shape, bool)
        if name in ("weight_v", "kernel"):
            fan_in = int(np.prod(s.shape[:-1]))
            return (rng.uniform(-1, 1, s.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name == "weight_g":
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        if name == "scale":
            return np.ones(s.shape, np.float32)
        if name == "codebooks":
            return rng.uniform(-0.5, 0.5, s.shape).astype(np.float32)
        if name == "bias":
            return rng.uniform(-0.05, 0.05, s.shape).astype(np.float32)
        return np.zeros(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


# The train-step and training-loop tests train the tiny config's small step.
TRAIN_TEST_OVERRIDES = SMALL_STEP_OVERRIDES


def tiny_step_config():
    """The tiny config with ``TRAIN_TEST_OVERRIDES``."""
    cfg = config("tiny")
    cfg.update_from_flattened_dict(TRAIN_TEST_OVERRIDES)
    return cfg


def tiny_train_config(data_dir: str, total_steps: int):
    """``tiny_step_config()`` trained on ``data_dir``, checkpoints every 2 steps, eval every 4."""
    cfg = tiny_step_config()
    cfg.data.dir = data_dir
    cfg.batch_size = 8
    cfg.total_steps = total_steps
    cfg.checkpoint_every = 2
    cfg.eval_every = 4
    cfg.log_every = 1
    return cfg


def smooth_adam(cfg, eps: float = 100.0):
    """Adam with a large ``eps``: updates proportional to the gradient instead of ~lr*sign(g),
    so two runs whose gradients differ by float rounding stay within rounding of each other
    over several steps (the sharding-equivalence tests compare exactly that)."""
    cfg.optim.g.eps = cfg.optim.d.eps = eps
    return cfg


def write_clips(directory, n: int = 6) -> None:
    """``n`` short synthetic speech clips (16 kHz wav) into ``directory``."""
    import soundfile as sf

    from hificodec_jax.data.demo_audio import synthetic_speech

    for i in range(n):
        sf.write(
            Path(directory) / f"clip{i}.wav", synthetic_speech(16000, 0.5 + 0.1 * i, seed=i), 16000
        )


def ynn_convolutions(hlo_text: str) -> int:
    """Convolutions inside YNNPACK library fusions of a compiled module's HLO text."""
    count = 0
    ynn = set(
        re.findall(r'calls=%(\S+?), backend_config=\{"fusion_config":\{"kind":"__ynn', hlo_text)
    )
    for name, body in re.findall(r"^%(\S+) \(.*?\{\n(.*?)\n\}", hlo_text, re.M | re.S):
        if name in ynn:
            count += body.count(" convolution(")
    return count


def conv_forms(hlo_text: str) -> list[str]:
    """The ``dim_labels`` of every convolution in a compiled module's HLO text, in order
    (``b0f_0io->b0f`` / ``b01f_01io->b01f``: the canonical forms XLA CPU runs as library calls)."""
    return re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo_text)
