"""Configs and the modules built from them: :func:`load_config` (a ``configs/*.py`` file, a
released model's name, a model directory or its ``config.json``) and :func:`build_codec`.

The only place that reads config objects for the models: modules themselves get plain typed
fields. Both are re-exported as ``hificodec_jax.load_config`` / ``hificodec_jax.build_codec``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hificodec_jax import presets
from hificodec_jax.models.codec import Codec, DecoderOnlyCodec
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


def build_codec(
    config: ml_collections.ConfigDict, *, weight_norm: bool = True, has_encoder: bool = True
) -> Codec:
    """The ``Codec`` module for a config's ``model`` section.

    ``weight_norm=False`` builds the inference form whose convs hold plain kernels: feed it
    variables passed through :func:`hificodec_jax.models.layers.fold_weight_norm`.
    ``has_encoder=False`` builds a :class:`~hificodec_jax.models.codec.DecoderOnlyCodec`.
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
    rate = config.audio.sample_rate if "audio" in config else None
    codec = Codec(
        encoder=encoder, quantizer=quantizer, decoder=decoder, hop=hop, dtype=dtype,
        sample_rate=rate,
    )  # fmt: skip
    return codec if has_encoder else DecoderOnlyCodec.of(codec)


def variable_shapes(codec: Codec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Flat ``"params/decoder/conv_pre/weight_v" -> (shape, dtype)`` of the variables ``codec``
    expects (traced, not computed; a decoder-only codec expects no ``params/encoder``)."""
    dummy = jax.ShapeDtypeStruct((1, codec.hop), np.float32)
    full = codec if not isinstance(codec, DecoderOnlyCodec) else Codec(
        encoder=codec.encoder.clone(), quantizer=codec.quantizer.clone(),
        decoder=codec.decoder.clone(), hop=codec.hop,
    )  # fmt: skip
    shapes = jax.eval_shape(full.init, jax.random.key(0), dummy)
    out = {
        "/".join(str(p.key) for p in path): (tuple(s.shape), np.dtype(s.dtype))
        for path, s in jax.tree_util.tree_flatten_with_path(shapes)[0]
    }
    if isinstance(codec, DecoderOnlyCodec):
        out = {p: v for p, v in out.items() if not p.startswith("params/encoder/")}
    return out


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


CONFIG_FILE = "config.json"  # a model directory's config (hificodec_jax.model_dir)


def _tuples(x):
    """JSON lists back to tuples (the modules' sequence fields, hashable config values)."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def config_to_json(config) -> str:
    """A config as the JSON text a model directory stores."""
    if hasattr(config, "to_json_best_effort"):
        return config.to_json_best_effort(indent=2, sort_keys=True)
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps(d, indent=2, sort_keys=True, default=str)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of :func:`config_to_json`."""
    return ml_collections.ConfigDict(_tuples(json.loads(text)))


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config of ``path``: ``get_config(arg)`` of a ``configs/*.py`` file, a released
    model's config by name (``"hificodec-16k-320d"``, see :mod:`hificodec_jax.presets`), either
    optionally suffixed ``:arg`` (like absl); or a stored ``config.json``, given as the file or
    as the model directory that holds it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{os.path.dirname(path)}: no {CONFIG_FILE} (not a model directory)"
            )
    if path.endswith(".json") and os.path.isfile(path):
        with open(path) as f:
            try:
                return config_from_json(f.read())
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
                raise ValueError(f"{path}: unreadable config ({e})") from e
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
