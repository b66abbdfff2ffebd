"""hificodec_jax: HiFi-Codec (group-residual VQ neural audio codec) in JAX/Flax.

Importing the package has no side effects and loads nothing heavy; each name below is imported
on first use.

Models: ``load(name_or_dir)`` (a released model by name, e.g. ``"hificodec-16k-320d"``, or a
model directory) -> ``Model`` (unpacks as ``codec, variables``), ``download(name)``,
``model_names()``, ``load_config(name_or_path)``, ``build_codec(config)``, ``save_model``.
Coding: ``encode_batch`` / ``decode_batch`` (lists of clips of any lengths),
``chunked_encode`` / ``chunked_decode`` (long files in windows), ``read_hfc`` / ``write_hfc``
(``.hfc`` bitstreams, ``HfcHeader``), ``enable_compilation_cache()``; ``DecodeStream`` (exact
streaming decode of codes as they arrive; the functional form is
:mod:`hificodec_jax.models.streaming`).
Corpora for codec language models: ``tokenize(model, input, out)`` and ``TokenSource(out)``
(a grain data source; the ``[train]`` extra).
Building blocks: ``Codec``, ``CodecOutput``, ``fold_weight_norm``, ``param_init_key``,
``bitrate``, ``hop_length``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.3.0"

_LAZY = {
    "load": "hificodec_jax.loading",
    "Model": "hificodec_jax.loading",
    "download": "hificodec_jax.hub",
    "model_names": "hificodec_jax.hub",
    "build_codec": "hificodec_jax.factory",
    "load_config": "hificodec_jax.factory",
    "bitrate": "hificodec_jax.factory",
    "hop_length": "hificodec_jax.factory",
    "save_model": "hificodec_jax.model_dir",
    "encode_batch": "hificodec_jax.inference.batching",
    "decode_batch": "hificodec_jax.inference.batching",
    "chunked_encode": "hificodec_jax.inference.long_files",
    "chunked_decode": "hificodec_jax.inference.long_files",
    "read_hfc": "hificodec_jax.inference.bitstream",
    "write_hfc": "hificodec_jax.inference.bitstream",
    "HfcHeader": "hificodec_jax.inference.bitstream",
    "enable_compilation_cache": "hificodec_jax.inference.compile_cache",
    "DecodeStream": "hificodec_jax.models.decode_stream",
    "tokenize": "hificodec_jax.tokens.job",
    "TokenSource": "hificodec_jax.tokens.store",
    "Codec": "hificodec_jax.models.codec",
    "CodecOutput": "hificodec_jax.models.codec",
    "fold_weight_norm": "hificodec_jax.models.layers",
    "param_init_key": "hificodec_jax.models.layers",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names load lazily
    from hificodec_jax.factory import bitrate, build_codec, hop_length, load_config  # noqa: F401
    from hificodec_jax.hub import download, model_names  # noqa: F401
    from hificodec_jax.inference.batching import decode_batch, encode_batch  # noqa: F401
    from hificodec_jax.inference.bitstream import HfcHeader, read_hfc, write_hfc  # noqa: F401
    from hificodec_jax.inference.compile_cache import enable_compilation_cache  # noqa: F401
    from hificodec_jax.inference.long_files import chunked_decode, chunked_encode  # noqa: F401
    from hificodec_jax.loading import Model, load  # noqa: F401
    from hificodec_jax.model_dir import save_model  # noqa: F401
    from hificodec_jax.models.codec import Codec, CodecOutput  # noqa: F401
    from hificodec_jax.models.decode_stream import DecodeStream  # noqa: F401
    from hificodec_jax.models.layers import fold_weight_norm, param_init_key  # noqa: F401
    from hificodec_jax.tokens.job import tokenize  # noqa: F401
    from hificodec_jax.tokens.store import TokenSource  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'hificodec_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
