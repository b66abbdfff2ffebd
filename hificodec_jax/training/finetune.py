"""Fine-tuning: a fresh train state whose generator and codebooks come from a trained model.

``config.init_from`` names a model directory (a training ``export``, a converted checkpoint) or
a released model (``hificodec_jax.load`` resolves both). The discriminators, their spectral-norm
vectors and both optimizer states stay as initialised (the released models ship no
discriminators). Codebooks move between the two quantizer modes: a model's ``params`` codebooks
("loss" mode) become the ``vq`` collection for EMA training, and the other way round.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging

from hificodec_jax.loading import load
from hificodec_jax.models.quantizer import ema_state_from_codebooks
from hificodec_jax.training.sharding import place_like
from hificodec_jax.training.step import TrainState


def generator_variables(variables: dict, update: str) -> tuple[dict, dict]:
    """``(g_params, vq)`` in the layout a train state with quantizer ``update`` mode holds,
    from a model's stored ``variables`` (either mode)."""
    params = {k: v for k, v in variables["params"].items() if k != "quantizer"}
    quantizer = dict(variables["params"].get("quantizer", {}))
    stored_vq = dict(variables.get("vq", {}).get("quantizer", {}))
    codebooks = quantizer.pop("codebooks", None)
    if codebooks is None:
        codebooks = stored_vq.get("codebooks")
    if codebooks is None:
        raise ValueError("the model has no codebooks (params/quantizer or vq/quantizer)")
    if quantizer:
        params["quantizer"] = quantizer
    if update == "loss":
        params["quantizer"] = {**quantizer, "codebooks": codebooks}
        return params, {}
    if bool(np.asarray(stored_vq.get("initialized", False))) and "cluster_size" in stored_vq:
        return params, {"quantizer": stored_vq}  # an EMA-trained model: keep its statistics
    return params, {"quantizer": ema_state_from_codebooks(codebooks)}


def init_from_model(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
    """``state`` with its generator and codebooks replaced by those of ``config.init_from``.

    Raises ``ValueError`` naming the model when it has no encoder, another sample rate, or a
    generator whose variables do not match the config's (train with the model's architecture).
    """
    name = config.init_from
    model = load(name, inference=False)
    variables = model.variables
    if "encoder" not in variables["params"]:
        raise ValueError(
            f"init_from={name!r} is a decoder-only model: fine-tuning needs an encoder"
        )
    model_sr = int(model.config.audio.sample_rate)
    if model_sr != config.audio.sample_rate:
        raise ValueError(
            f"init_from={name!r} is a {model_sr} Hz model; the config trains at "
            f"{config.audio.sample_rate} Hz"
        )
    host = jax.tree.map(np.asarray, variables)
    g_params, vq = generator_variables(host, config.model.quantizer.update)
    hint = "train with the model's architecture (its config.json)"
    g_params = place_like(g_params, state.g_params, f"init_from={name!r} params", hint=hint)
    vq = place_like(vq, state.vq, f"init_from={name!r} vq", hint=hint)
    logging.info("fine-tuning from %s: generator and codebooks loaded", name)
    return state.replace(g_params=g_params, vq=vq)
