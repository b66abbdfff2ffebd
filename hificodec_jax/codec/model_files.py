"""How a model directory stores its variables and config (see :mod:`hificodec_jax.codec.model_io`).

Variables are nested dicts of numpy arrays; on disk they are one safetensors file with flat
``"params/decoder/conv_pre/weight_v"`` keys (format version 2), or an orbax checkpoint (format
version 1, read only). The config is JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import safetensors.numpy

VARIABLES_DIR = "variables"  # format version 1: an orbax checkpoint


class ModelLoadError(ValueError):
    """A model directory cannot be loaded (missing files, corrupt checkpoint, unknown format)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model directory (or one of its files) does not exist."""


def to_host(variables) -> dict:
    """Variables (dicts / FrozenDicts of jax or numpy arrays) -> nested dicts of numpy arrays
    with JAX's canonical dtypes (float64 -> float32 unless x64 is on: what the codec computes
    with, so a tree and its saved copy have the same id)."""
    import flax

    if isinstance(variables, flax.core.FrozenDict):
        variables = flax.core.unfreeze(variables)
    variables = jax.device_get(variables)

    def canonical(x):
        x = np.asarray(x)
        return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)

    return jax.tree.map(canonical, variables)


def leaf_path(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def flat(tree) -> dict[str, object]:
    return {leaf_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def hash_variables(variables) -> bytes:
    h = hashlib.sha256()
    for path, leaf in sorted(flat(to_host(variables)).items()):
        a = np.ascontiguousarray(leaf)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{path}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.digest()[:16]


def _tuples(x):
    """JSON lists back to tuples (the modules' sequence fields, hashable config values)."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def config_to_json(config) -> str:
    if hasattr(config, "to_json_best_effort"):
        return config.to_json_best_effort(indent=2, sort_keys=True)
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps(d, indent=2, sort_keys=True, default=str)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_tuples(json.loads(text)))


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, x in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = x
    return tree


def read_weights(path: Path) -> dict:
    """The variables of a safetensors file written by :func:`write_weights`."""
    if not path.is_file():
        raise ModelNotFoundError(f"{path.parent}: missing {path.name}")
    try:
        return _unflatten(safetensors.numpy.load_file(path))
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise ModelLoadError(
            f"{path}: cannot read the weights (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e


def read_orbax(path: Path) -> dict:
    """Format version 1's ``variables/`` orbax checkpoint, read by this process alone."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path.parent}: missing the {VARIABLES_DIR}/ checkpoint")
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ModelLoadError(
            f"{path.parent} is a hificodec_jax 0.1 model directory (orbax checkpoint): reading "
            "it needs orbax-checkpoint (pip install 'hificodec_jax[train]'), or re-save it "
            "with save_model where orbax is installed"
        ) from e
    me = jax.process_index()  # a model directory is read by one process: no barriers
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    try:
        with ocp.StandardCheckpointer(multiprocessing_options=options) as ckptr:
            return ckptr.restore(path.absolute())
    except Exception as e:  # orbax / tensorstore raise many types for damaged files
        raise ModelLoadError(
            f"{path}: cannot read the variables checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        ) from e


def write_weights(path: Path, variables: dict, model_id: str) -> None:
    """``variables`` (host arrays) as one safetensors file (flat ``/``-joined keys)."""
    safetensors.numpy.save_file(
        {p: np.require(x, requirements="C") for p, x in flat(variables).items()},
        path,
        metadata={"format": "flax", "model_id": model_id},
    )
