"""Map between the reference (AcademiCodec / PyTorch) checkpoint layout and Flax variables.

A released HiFi-Codec ``g_`` checkpoint is ``{"generator": sd, "encoder": sd, "quantizer": sd}``
of torch state dicts (reference.md section 9). Key ``resblocks.3.convs1.2.weight_v`` of module
``generator`` is Flax ``params/decoder/resblocks_3/convs1_2/weight_v``; tensors change layout:

* conv weight / ``weight_v`` ``(out, in, k)`` -> ``[k, in, out]``; transposed conv (decoder
  ``ups.*``) ``(in, out, k)`` -> ``[k, in, out]``; ``weight_g`` is permuted like ``weight_v``
  (``(out,1,1)`` -> ``[1,1,out]``, transposed ``(in,1,1)`` -> ``[1,in,1]``);
* encoder GroupNorm ``normalize.n.weight`` -> ``scale``;
* codebooks ``quantizer_modules.{g}.embedding.weight`` (level 0) and
  ``quantizer_modules{r+1}.{g}.embedding.weight`` (level r >= 1; the reference has r <= 1) ->
  ``codebooks[r, g]`` in ``params`` ("loss" mode) or the ``vq`` collection ("ema" mode).

Only the HiFi-GAN family has a reference layout. Arrays are numpy; nothing here runs torch.
:func:`convert_checkpoint` turns a released ``.pth`` file into a model directory
(:mod:`hificodec_jax.model_dir`) in one call.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict

import jax
import ml_collections
import numpy as np

from hificodec_jax.factory import build_codec, load_config
from hificodec_jax.model_dir import save_model
from hificodec_jax.models.codec import Codec
from hificodec_jax.models.quantizer import ema_state_from_codebooks
from hificodec_jax.reference import layout
from hificodec_jax.reference.pth import load_pth

_TORCH_LEAF = {"scale": "weight", "kernel": "weight"}  # GroupNorm scale, plain conv kernel
MODULES = {"encoder": "encoder", "generator": "decoder"}  # torch module -> Flax submodule
TORCH_MODULES = ("generator", "encoder", "quantizer")  # the state dicts of a released .pth
_CODEBOOK = re.compile(r"^quantizer_modules(\d*)\.(\d+)\.embedding\.weight$")


class CheckpointMismatchError(ValueError):
    """A reference checkpoint does not fit the config's model (names the first bad key)."""


def _flax_path(module: str, key: str) -> tuple[tuple[str, ...], str]:
    """torch key -> (Flax module path, Flax leaf name)."""
    *parts, leaf = key.split(".")
    path = layout.flax_modules(parts, (MODULES[module],))
    if module == "encoder" and path[1].startswith("normalize_") and leaf == "weight":
        leaf = "scale"
    elif leaf == "weight":
        leaf = "kernel"
    return path, leaf


def _is_transposed(module: str, path: tuple[str, ...]) -> bool:
    return module == "generator" and path[1].startswith("ups_")


def _to_flax(x: np.ndarray, module: str, path, leaf: str) -> np.ndarray:
    if leaf in ("weight_v", "weight_g", "kernel") and x.ndim == 3:
        return layout.to_flax(x, transposed=_is_transposed(module, path))
    return x


def _to_torch(x: np.ndarray, module: str, path, leaf: str) -> np.ndarray:
    if leaf in ("weight_v", "weight_g", "kernel") and x.ndim == 3:
        return layout.to_torch(x, transposed=_is_transposed(module, path))
    return x


def _codebook_key(level: int, group: int) -> str:
    return f"quantizer_modules{'' if level == 0 else level + 1}.{group}.embedding.weight"


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def torch_to_flax(
    state: dict, codec: Codec, *, allow_missing_encoder: bool = False
) -> dict[str, dict]:
    """Reference state dicts -> ``{"params": ..., "vq": ...}`` variables for ``codec``.

    ``codec`` must be the HiFi-GAN family built with ``weight_norm=True`` (the checkpoint's own
    parametrisation). Raises :class:`CheckpointMismatchError` naming the first key whose shape
    differs (with both shapes), an unexpected key, or a missing key. Without an ``encoder``
    entry the encoder params are zeros if ``allow_missing_encoder`` (decoder-only use).
    """
    dummy = jax.ShapeDtypeStruct((1, codec.hop), np.float32)
    template = jax.eval_shape(codec.init, jax.random.key(0), dummy)
    params: dict = {}
    for module, flax_name in MODULES.items():
        if module not in state:
            if module == "encoder" and allow_missing_encoder:
                zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template["params"])
                params[flax_name] = zeros[flax_name]
                continue
            raise CheckpointMismatchError(f"checkpoint has no {module!r} state dict")
        expected = _flat_expected(template["params"][flax_name], flax_name)
        seen = set()
        for key, value in state[module].items():
            path, leaf = _flax_path(module, key)
            full = (*path, leaf)
            if full not in expected:
                raise CheckpointMismatchError(
                    f"{module}.{key}: not in the config's model (unexpected key)"
                )
            want = expected[full]
            value = np.asarray(value, np.float32)
            torch_shape = _to_torch(np.empty(want, np.uint8), module, path, leaf).shape
            if value.shape != torch_shape:
                raise CheckpointMismatchError(
                    f"{module}.{key}: checkpoint shape {tuple(value.shape)} != model shape "
                    f"{tuple(torch_shape)}"
                )
            _set(params, full, _to_flax(value, module, path, leaf))
            seen.add(full)
        missing = [p for p in expected if p not in seen]
        if missing:
            raise CheckpointMismatchError(
                f"{module}.{_torch_key(missing[0])}: missing from the checkpoint "
                f"({len(missing)} keys missing)"
            )
    codebooks = _codebooks_from_torch(state.get("quantizer", {}), codec)
    variables: dict = {"params": params}
    if codec.quantizer.update == "loss":
        params["quantizer"] = {"codebooks": codebooks}
    else:
        # Fine-tune released weights with update="loss" to keep every code alive.
        variables["vq"] = {"quantizer": ema_state_from_codebooks(codebooks)}
    return variables


def _flat_expected(tree, name) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat[(name, *(p.key for p in path))] = tuple(leaf.shape)
    return flat


def _torch_key(full: tuple[str, ...]) -> str:
    *path, leaf = full[1:]
    return ".".join([*layout.torch_modules(path), _TORCH_LEAF.get(leaf, leaf)])


def _codebooks_from_torch(sd: dict, codec: Codec) -> np.ndarray:
    q = codec.quantizer
    r, g, k, d = q.num_levels, q.num_groups, q.codebook_size, q.dim // q.num_groups
    out = np.zeros((r, g, k, d), np.float32)
    expected = {_codebook_key(i, j): (i, j) for i in range(r) for j in range(g)}
    for key, value in sd.items():
        if key not in expected:
            raise CheckpointMismatchError(f"quantizer.{key}: not in the config's model")
        value = np.asarray(value, np.float32)
        if value.shape != (k, d):
            raise CheckpointMismatchError(
                f"quantizer.{key}: checkpoint shape {tuple(value.shape)} != model shape {(k, d)}"
            )
        out[expected[key]] = value
    missing = [key for key in expected if key not in sd]
    if missing:
        raise CheckpointMismatchError(f"quantizer.{missing[0]}: missing from the checkpoint")
    return out


def flax_to_torch(variables: dict, codec: Codec) -> dict[str, OrderedDict]:
    """Inverse of :func:`torch_to_flax`: variables -> reference-layout state dicts (numpy)."""
    params = variables["params"]
    out: dict[str, OrderedDict] = {}
    for module, flax_name in MODULES.items():
        sd = OrderedDict()
        for full, _ in _flat_expected(params[flax_name], flax_name).items():
            *path, leaf = full
            value = np.asarray(_get(params, full))
            sd[_torch_key(full)] = _to_torch(value, module, tuple(path), leaf)
        out[module] = sd
    q = codec.quantizer
    codebooks = (
        params["quantizer"]["codebooks"]
        if q.update == "loss"
        else variables["vq"]["quantizer"]["codebooks"]
    )
    out["quantizer"] = OrderedDict(
        (_codebook_key(i, j), np.asarray(codebooks[i, j]))
        for i in range(q.num_levels)
        for j in range(q.num_groups)
    )
    return out


# --------------------------------------------------------------------------------------------
# A released .pth file -> a model directory


def convert_checkpoint(
    pth_path: str | os.PathLike,
    config: ml_collections.ConfigDict | str,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    source: str | None = None,
) -> str:
    """A released AcademiCodec ``.pth`` -> a model directory; returns its path.

    ``config`` is a ConfigDict, a config file path (``configs/grvq4.py``) or a preset name
    (``"hificodec-16k-320d"``, :mod:`hificodec_jax.presets`). The ``.pth`` is
    read by the torch-free :func:`~hificodec_jax.reference.pth.load_pth` (a truncated or damaged
    file raises its ``CheckpointFormatError``); the weights go through
    :func:`torch_to_flax` (a checkpoint that does not fit the config
    raises ``CheckpointMismatchError`` naming the first bad key and both shapes). A checkpoint
    without an ``encoder`` state dict gives a decoder-only model. ``source`` (default: the
    file's name) is recorded in ``model.json`` with the file's SHA-256.
    """
    pth_path = os.fspath(pth_path)
    if isinstance(config, str | os.PathLike):
        config = load_config(os.fspath(config))
    if not os.path.isfile(pth_path):
        raise FileNotFoundError(f"no checkpoint file {pth_path!r}")
    ckpt = load_pth(pth_path)
    state = {k: ckpt[k] for k in TORCH_MODULES if k in ckpt}
    if "generator" not in state:
        raise CheckpointMismatchError(
            f"{pth_path}: no 'generator' state dict (top-level keys: {sorted(map(str, ckpt))})"
        )
    codec = build_codec(config, weight_norm=True)
    variables = torch_to_flax(state, codec, allow_missing_encoder=True)
    if "encoder" not in state:
        variables["params"] = {k: v for k, v in variables["params"].items() if k != "encoder"}
    with open(pth_path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    source = f"{source or os.path.basename(pth_path)} sha256:{digest[:16]}"
    return save_model(out_dir, config, variables, source=source, overwrite=overwrite)
