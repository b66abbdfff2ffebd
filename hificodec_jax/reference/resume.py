"""Continue a reference (PyTorch) training run in ``main``: ``config.resume_reference``.

``--config.resume_reference=G_PTH,DO_PTH`` names the reference's ``g_XXXXXXXX`` and
``do_XXXXXXXX`` files (the ``academicodec`` recipe: codebooks trained by the loss). A fresh run
(no checkpoint in the workdir yet) then starts from them: generator, encoder, quantizer,
discriminators and MSD's spectral-norm vectors, both Adam states (moments and step count) and
the step number; the data position starts fresh, and later restarts resume from this run's own
checkpoints. ``--config.resume_reference_fresh_stft=True`` starts MS-STFT from its
initialisation where the ``do_`` file comes from a single-GPU run (which lacks its weights).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from hificodec_jax import factory
from hificodec_jax.reference.pth import load_pth
from hificodec_jax.reference.training_import import import_reference_training
from hificodec_jax.training.sharding import place_like
from hificodec_jax.training.step import TrainState

__all__ = ["reference_paths", "resume_from_reference"]


def reference_paths(value: str) -> tuple[str, str]:
    """``"G_PTH,DO_PTH"`` -> the two paths; a clear error naming the argument otherwise."""
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"resume_reference={value!r}: expected 'G_PTH,DO_PTH' (two .pth files)")
    for path in parts:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"resume_reference: no such file {path!r}")
    return parts[0], parts[1]


def resume_from_reference(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
    """``state`` (freshly initialised) with everything of ``config.resume_reference``'s pair."""
    if config.get("init_from"):
        raise ValueError("set either init_from or resume_reference, not both")
    g_path, do_path = reference_paths(config.resume_reference)
    codec = factory.build_codec(config, weight_norm=True)
    discs = factory.build_discriminators(config)
    ref = import_reference_training(
        load_pth(g_path),
        load_pth(do_path),
        codec,
        discs,
        fresh_stft=bool(config.get("resume_reference_fresh_stft", False)),
        rng=jax.random.key(config.seed),
    )
    g_opt, d_opt = ref.opt_states(
        jax.tree.map(np.asarray, state.g_opt_state), jax.tree.map(np.asarray, state.d_opt_state)
    )
    logging.info(
        "continuing the reference run %s + %s at step %d (epoch %d)%s",
        g_path,
        do_path,
        ref.step,
        ref.epoch,
        "; MS-STFT starts fresh" if ref.fresh_stft else "",
    )

    def put(tree, like, what):
        return place_like(tree, like, f"resume_reference: the imported {what}")

    return state.replace(
        step=put(np.asarray(ref.step, np.int32), state.step, "step"),
        g_params=put(ref.g_params, state.g_params, "generator parameters"),
        d_params=put(ref.d_params, state.d_params, "discriminator parameters"),
        spectral=put(ref.spectral, state.spectral, "spectral-norm vectors"),
        g_opt_state=put(g_opt, state.g_opt_state, "generator Adam state"),
        d_opt_state=put(d_opt, state.d_opt_state, "discriminator Adam state"),
    )
