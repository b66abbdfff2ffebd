"""Shared test helpers: repo paths, configs, small deterministic signals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import hificodec_jax

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def config(name: str):
    """``configs/<name>.py``'s ``get_config()``."""
    return hificodec_jax.load_config(str(REPO / "configs" / f"{name}.py"))


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
