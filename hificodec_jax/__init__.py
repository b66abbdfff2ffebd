"""hificodec_jax: HiFi-Codec (group-residual VQ neural audio codec) in JAX/Flax.

Importing the package has no side effects; the public API is loaded on first use:
``load(name_or_dir)`` (a released model by name, e.g. ``"hificodec-16k-320d"``, or a model
directory), ``download(name)``, ``model_names()``, ``build_codec(config)``,
``load_config(path_or_name)``, ``fold_weight_norm(params)``, ``param_init_key(key)``.
"""

__version__ = "0.2.0"

_LAZY = {
    "build_codec": "hificodec_jax.factory",
    "load_config": "hificodec_jax.factory",
    "bitrate": "hificodec_jax.factory",
    "hop_length": "hificodec_jax.factory",
    "fold_weight_norm": "hificodec_jax.models.layers",
    "param_init_key": "hificodec_jax.models.layers",
    "Codec": "hificodec_jax.models.codec",
    "CodecOutput": "hificodec_jax.models.codec",
    "load": "hificodec_jax.codec.model_io",
    "download": "hificodec_jax.codec.pretrained",
    "model_names": "hificodec_jax.codec.pretrained",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hificodec_jax' has no attribute {name!r}")
