"""The model directory: one self-describing folder per model, read and written here only.

Layout (format version 2)::

    <dir>/config.json         the full config (``ConfigDict.to_json_best_effort``)
    <dir>/model.safetensors   the variables, flat ``"params/decoder/conv_pre/weight_v"`` keys
    <dir>/model.json          {format_version, model_id, has_encoder, weight_norm, source,
                               hificodec_jax_version, files: {file: size}}

JSON plus safetensors is what the Hugging Face Hub and other frameworks read. Directories of
format version 1 (hificodec_jax 0.1: the variables as an orbax checkpoint in ``variables/``)
still load; reading them needs ``orbax-checkpoint`` (the ``[train]`` extra).

:func:`save_model` writes everything into a hidden sibling temp directory and renames it into
place at the end, so a crash never leaves a half-written model directory behind. ``model_id`` is
the first 16 bytes of a SHA-256 over the stored variables (every leaf, in sorted path order:
path, dtype, shape and bytes), so two directories holding the same weights have the same id,
whatever their format version. :func:`read_model` reads each file once: it checks the file
sizes against ``files`` first (a truncated or missing file is reported as such), then
recomputes the id and refuses arrays that no longer match (:func:`check_structure` tells whether
config and variables fit together, once a codec is built). Nothing here knows model names or the Hub (:mod:`hificodec_jax.hub`), and nothing
builds a codec (:func:`hificodec_jax.load`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import safetensors.numpy

from hificodec_jax import __version__
from hificodec_jax.factory import (
    CONFIG_FILE,
    build_codec,
    config_from_json,
    config_to_json,
    variable_shapes,
)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"
VARIABLES_DIR = "variables"  # format version 1: an orbax checkpoint

__all__ = [
    "CONFIG_FILE", "META_FILE", "WEIGHTS_FILE", "ModelFiles", "ModelLoadError",
    "ModelNotFoundError", "host_variables", "model_id", "read_model", "save_model",
]  # fmt: skip


class ModelLoadError(ValueError):
    """A model directory cannot be loaded (missing files, corrupt checkpoint, unknown format)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model directory (or one of its files) does not exist."""


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """What a model directory holds, read and verified: ``variables`` are numpy arrays exactly
    as stored (weight-normed unless saved folded; without ``params/encoder`` for a
    decoder-only model)."""

    directory: Path
    meta: dict[str, Any]
    config: ml_collections.ConfigDict
    variables: dict

    @property
    def model_id(self) -> bytes:
        return bytes.fromhex(self.meta["model_id"])

    @property
    def has_encoder(self) -> bool:
        return bool(self.meta["has_encoder"])

    @property
    def weight_norm(self) -> bool:
        return is_weight_normed(self.variables["params"])


# --------------------------------------------------------------------------------------------
# Variables


def host_variables(variables) -> dict:
    """Variables (dicts / FrozenDicts of jax or numpy arrays) -> nested dicts of numpy arrays
    with JAX's canonical dtypes (float64 -> float32 unless x64 is on: what the codec computes
    with, so a tree and its saved copy have the same id)."""
    if isinstance(variables, flax.core.FrozenDict):
        variables = flax.core.unfreeze(variables)
    variables = jax.device_get(variables)

    def canonical(x):
        x = np.asarray(x)
        return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)

    return jax.tree.map(canonical, variables)


def _leaf_path(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def flat(tree) -> dict[str, Any]:
    """``{"params/decoder/conv_pre/weight_v": leaf}`` of a variables tree."""
    return {_leaf_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten(leaves: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, x in leaves.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = x
    return tree


def _hash(host: dict) -> bytes:
    h = hashlib.sha256()
    for path, leaf in sorted(flat(host).items()):
        a = np.ascontiguousarray(leaf)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{path}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.digest()[:16]


def is_weight_normed(params) -> bool:
    return any(path.endswith("/weight_v") for path in flat(params))


def model_id(directory_or_variables) -> bytes:
    """16-byte id of a model: read from ``<dir>/model.json``, or computed from a variables
    tree. The id is that of the stored (weight-normed) variables; a folded tree has another."""
    if isinstance(directory_or_variables, str | os.PathLike):
        meta = _read_meta(Path(directory_or_variables))
        return bytes.fromhex(meta["model_id"])
    return _hash(host_variables(directory_or_variables))


def check_structure(variables, codec, where: str) -> None:
    """Raise ValueError naming the first leaf of ``variables`` that ``codec`` does not expect."""
    want, leaves = variable_shapes(codec), flat(variables)
    for path, x in leaves.items():
        if path not in want:
            raise ValueError(f"{where}: variable {path!r} is not in the config's model")
        shape, _ = want[path]
        if tuple(np.shape(x)) != shape:
            raise ValueError(
                f"{where}: variable {path!r} has shape {tuple(np.shape(x))}, the config's model "
                f"expects {shape}"
            )
    missing = [p for p in want if p not in leaves]
    if missing:
        raise ValueError(
            f"{where}: variable {missing[0]!r} is missing ({len(missing)} missing in all)"
        )


# --------------------------------------------------------------------------------------------
# Write


def save_model(
    directory: str | os.PathLike,
    config: ml_collections.ConfigDict,
    variables,
    *,
    source: str = "",
    overwrite: bool = False,
) -> str:
    """Write ``config`` and ``variables`` as a model directory; returns its absolute path.

    ``variables`` is ``{"params": ..., ...}`` as ``codec.init`` makes it (weight-normed; a
    folded tree is accepted too), optionally without ``params/encoder`` (decoder-only model).
    Its structure and shapes are checked against the config's codec and non-finite values are
    refused. An existing directory is replaced only if ``overwrite``.
    """
    if "://" in os.fspath(directory):
        return _save_remote(os.fspath(directory), config, variables, source, overwrite)
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists (pass overwrite=True to replace it)")
    host = host_variables(variables)
    if not isinstance(host, dict) or "params" not in host:
        raise ValueError("variables must be a dict with a 'params' collection")
    leaves = flat(host)
    bad = [p for p, x in leaves.items() if x.dtype.kind in "fc" and not np.all(np.isfinite(x))]
    if bad:
        raise ValueError(f"variable {bad[0]!r} has NaN or infinite values; model not saved")
    has_encoder = "encoder" in host["params"]
    weight_norm = is_weight_normed(host["params"])
    codec = build_codec(config, weight_norm=weight_norm, has_encoder=has_encoder)
    check_structure(host, codec, where="save_model")
    ident = _hash(host).hex()
    meta = {
        "format_version": FORMAT_VERSION,
        "model_id": ident,
        "has_encoder": has_encoder,
        "weight_norm": weight_norm,
        "source": source,
        "hificodec_jax_version": __version__,
    }

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = None
    try:
        tmp.mkdir()
        (tmp / CONFIG_FILE).write_text(config_to_json(config))
        safetensors.numpy.save_file(
            {p: np.require(x, requirements="C") for p, x in leaves.items()},
            tmp / WEIGHTS_FILE,
            metadata={"format": "flax", "model_id": ident},
        )
        # safetensors creates its file 0600; a model directory is shared like its other files.
        os.chmod(tmp / WEIGHTS_FILE, (tmp / CONFIG_FILE).stat().st_mode & 0o777)
        meta["files"] = {WEIGHTS_FILE: (tmp / WEIGHTS_FILE).stat().st_size}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))  # last: marks completeness
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists():
            os.rename(old, directory)  # put the previous model back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return str(directory)


def _save_remote(url: str, config, variables, source: str, overwrite: bool) -> str:
    """``save_model`` to ``gs://...`` (any etils.epath URL): written and verified locally, then
    uploaded file by file with ``model.json`` last (a reader never sees an incomplete model
    as complete). Loading needs a local copy (``gcloud storage cp -r``)."""
    from etils import epath  # the [train]/[gcs] extras: only remote workdirs need it

    dst = epath.Path(url)
    if dst.exists():
        if not overwrite:
            raise FileExistsError(f"{url} exists (pass overwrite=True to replace it)")
        dst.rmtree()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(save_model(Path(tmp) / "model", config, variables, source=source))
        files = sorted(
            (p for p in local.rglob("*") if p.is_file()), key=lambda p: p == local / META_FILE
        )
        for f in files:
            target = dst / f.relative_to(local).as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    return url


# --------------------------------------------------------------------------------------------
# Read


def _read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise ModelNotFoundError(f"no model directory {str(directory)!r}")
    path = directory / META_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{directory}: missing {META_FILE} (not a model directory, or an incomplete one)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable model metadata ({e})") from e
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: model metadata must be a JSON object")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelLoadError(
            f"{path}: unknown model format version {version!r} (this hificodec_jax reads "
            f"versions {list(READABLE_VERSIONS)}; the model was written by hificodec_jax "
            f"{meta.get('hificodec_jax_version', '?')})"
        )
    for key in ("model_id", "has_encoder"):
        if key not in meta:
            raise ModelLoadError(f"{path}: model metadata lacks {key!r}")
    return meta


def _read_config(directory: Path) -> ml_collections.ConfigDict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{directory}: missing {CONFIG_FILE}")
    try:
        return config_from_json(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable config ({e})") from e


def _check_sizes(root: Path, files: dict) -> None:
    """Cheap check of the stored files' sizes before any reader opens them."""
    for name, size in files.items():
        f = root / name
        if not f.is_file():
            raise ModelLoadError(f"{root}: file {name!r} is missing")
        if f.stat().st_size != size:
            raise ModelLoadError(
                f"{root}: file {name!r} has {f.stat().st_size} bytes, expected {size} "
                "(truncated or modified)"
            )


def _read_safetensors(path: Path) -> dict:
    if not path.is_file():
        raise ModelNotFoundError(f"{path.parent}: missing {path.name}")
    try:
        return _unflatten(safetensors.numpy.load_file(path))
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise ModelLoadError(
            f"{path}: cannot read the weights (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e


def _read_orbax(path: Path) -> dict:
    """Format version 1's ``variables/`` orbax checkpoint, read by this process alone."""
    if not path.is_dir():
        raise ModelNotFoundError(f"{path.parent}: missing the {VARIABLES_DIR}/ checkpoint")
    try:
        import orbax.checkpoint as ocp  # the [train] extra; only 0.1 directories need it
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


def read_model(directory: str | os.PathLike) -> ModelFiles:
    """Meta, config and variables of a model directory, each file read once and verified.

    Errors: :class:`ModelNotFoundError` (no directory, missing files), :class:`ModelLoadError`
    (corrupt or modified weights, unknown format version).
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    config = _read_config(directory)
    if meta["format_version"] == 1:
        root = directory / VARIABLES_DIR
        if root.is_dir():
            _check_sizes(root, meta.get("files", {}))
        variables = host_variables(_read_orbax(root))
    else:
        _check_sizes(directory, meta.get("files", {}))
        variables = host_variables(_read_safetensors(directory / WEIGHTS_FILE))
    if _hash(variables).hex() != meta["model_id"]:
        raise ModelLoadError(
            f"{directory}: the stored arrays do not match the model id {meta['model_id']} in "
            f"{META_FILE} (corrupt or modified weights)"
        )
    return ModelFiles(directory, meta, config, variables)
