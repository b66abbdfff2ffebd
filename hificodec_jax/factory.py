"""Build a :class:`~hificodec_jax.models.codec.Codec` from a config (``configs/*.py``).

The only place that reads config objects for the models: modules themselves get plain typed
fields. ``build_codec(config)`` is re-exported as ``hificodec_jax.build_codec``.
"""

from __future__ import annotations

import importlib.util
import math
import os

import jax.numpy as jnp
import ml_collections

from hificodec_jax.models.codec import Codec
from hificodec_jax.models.hifigan import HifiDecoder, HifiEncoder
from hificodec_jax.models.quantizer import GroupResidualVQ


def _family(name: str):
    """(encoder class, decoder class, encoder rate field, decoder rate field) of a family."""
    if name == "hifigan":
        return HifiEncoder, HifiDecoder, "strides", "upsample_rates"
    if name == "seanet":
        from hificodec_jax.models import seanet  # second family, paper text

        return seanet.SeanetEncoder, seanet.SeanetDecoder, "strides", "strides"
    raise ValueError(f"unknown model family {name!r}; one of ['hifigan', 'seanet']")


PRECISIONS = ("float32", "bfloat16")


def compute_dtype(config: ml_collections.ConfigDict):
    """The networks' compute dtype from ``config.precision`` (float32 when absent)."""
    precision = config.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ValueError(f"config.precision must be one of {PRECISIONS}, got {precision!r}")
    return jnp.dtype(precision)


def _as_dict(cfg) -> dict:
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {
        k: tuple(map(tuple, v)) if _nested(v) else tuple(v) if isinstance(v, list) else v
        for k, v in cfg.items()
    }


def _nested(v) -> bool:
    return isinstance(v, list | tuple) and bool(v) and isinstance(v[0], list | tuple)


def build_codec(config: ml_collections.ConfigDict, *, weight_norm: bool = True) -> Codec:
    """The ``Codec`` module for a config's ``model`` section.

    ``weight_norm=False`` builds the inference form whose convs hold plain kernels: feed it
    variables passed through :func:`hificodec_jax.models.layers.fold_weight_norm`.
    """
    model = config.model if "model" in config else config
    enc_cls, dec_cls, enc_rates, dec_rates = _family(model.family)
    enc_cfg, dec_cfg = _as_dict(model.encoder), _as_dict(model.decoder)
    hop = math.prod(enc_cfg[enc_rates])
    if math.prod(dec_cfg[dec_rates]) != hop:
        raise ValueError(
            f"encoder downsamples by {hop} but the decoder upsamples by "
            f"{math.prod(dec_cfg[dec_rates])}: their rates must have the same product"
        )
    d = model.latent_dim
    encoder = enc_cls(latent_dim=d, weight_norm=weight_norm, **enc_cfg)
    decoder = dec_cls(weight_norm=weight_norm, **dec_cfg)
    quantizer = GroupResidualVQ(dim=d, **_as_dict(model.quantizer))
    dtype = compute_dtype(config)
    return Codec(encoder=encoder, quantizer=quantizer, decoder=decoder, hop=hop, dtype=dtype)


def build_discriminators(config: ml_collections.ConfigDict):
    """The ``Discriminators`` module for a config's ``disc`` section."""
    from hificodec_jax.models.discriminators import Discriminators

    return Discriminators(**_as_dict(config.disc), dtype=compute_dtype(config))


def hop_length(config: ml_collections.ConfigDict) -> int:
    """Samples per frame of a config's codec."""
    model = config.model
    return math.prod(model.encoder.strides)


def bitrate(config: ml_collections.ConfigDict, num_levels: int | None = None) -> float:
    """Nominal bits per second of a config's codec (:meth:`Codec.bitrate` at its sample rate)."""
    return build_codec(config).bitrate(config.audio.sample_rate, num_levels)


def load_config(path: str) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file, or a released model's config by name
    (``"hificodec-16k-320d"``, see :mod:`hificodec_jax.presets`); either optionally suffixed
    ``:arg`` (like absl)."""
    from hificodec_jax import presets

    arg = None
    if ":" in os.path.basename(path):
        path, arg = path.rsplit(":", 1)
    if not os.path.isfile(path):
        if path in presets.PRESETS:
            return presets.get_config(path, arg)
        raise FileNotFoundError(
            f"no config file {path!r}, and no preset of that name (one of {presets.preset_names()})"
        )
    spec = importlib.util.spec_from_file_location("_hificodec_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()
