"""A self-describing model directory, and loading a codec in one call.

Layout of a model directory (format version 1)::

    <dir>/config.json   the full config (``ConfigDict.to_json_best_effort``)
    <dir>/variables/    the variables as an orbax checkpoint (tensorstore arrays; no pickle)
    <dir>/model.json    {format_version, model_id, has_encoder, weight_norm, source,
                         hificodec_jax_version, files: {checkpoint file: size}}

``save_model`` writes everything into a hidden sibling temp directory and renames it into place
at the end, so a crash never leaves a half-written model directory behind. ``model_id`` is the
first 16 bytes of a SHA-256 over the stored variables (every leaf, in sorted path order: path,
dtype, shape and bytes), so two directories holding the same weights have the same id. ``load``
checks the checkpoint's file sizes against ``files`` before reading (a truncated or missing
file is reported without orbax), then recomputes the id and refuses arrays that no longer match.

    codec, variables = hificodec_jax.load("models/hificodec-16k")
    codes = codec.apply(variables, wav, method="encode")

:func:`hificodec_jax.codec.convert.convert_checkpoint` turns a released AcademiCodec ``.pth`` (read
without torch) into such a directory. A checkpoint without an ``encoder`` state dict becomes a
decoder-only model: it stores no encoder weights, decodes as usual, and its codec raises
:class:`MissingEncoderError` from ``encode``/``encode_latent``/``__call__``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import ml_collections
import numpy as np

from hificodec_jax.models.codec import Codec

FORMAT_VERSION = 1
CONFIG_FILE, META_FILE, VARIABLES_DIR = "config.json", "model.json", "variables"


class ModelLoadError(ValueError):
    """A model directory cannot be loaded (missing files, corrupt checkpoint, unknown format)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model directory (or one of its files) does not exist."""


class MissingEncoderError(ValueError):
    """Encoding was asked of a decoder-only model."""


# --------------------------------------------------------------------------------------------
# The decoder-only codec


class DecoderOnlyCodec(Codec):
    """A :class:`Codec` whose checkpoint had no encoder: ``decode``/``decode_latent``/
    ``quantize`` work; anything that needs the encoder raises :class:`MissingEncoderError`."""

    def _no_encoder(self):
        raise MissingEncoderError(
            "this model has no encoder (it was converted from a decoder-only checkpoint): "
            "it can decode codes (method='decode') but cannot encode audio"
        )

    def __call__(self, wav, lengths=None, *, train=False, num_levels=None):
        self._no_encoder()

    def encode(self, wav, lengths=None, *, num_levels=None):
        self._no_encoder()

    def encode_latent(self, wav, lengths=None):
        self._no_encoder()


def _build(config, *, weight_norm: bool, has_encoder: bool):
    from hificodec_jax.factory import build_codec  # noqa: PLC0415

    codec = build_codec(config, weight_norm=weight_norm)
    if has_encoder:
        return codec
    return DecoderOnlyCodec(
        encoder=codec.encoder.clone(),
        quantizer=codec.quantizer.clone(),
        decoder=codec.decoder.clone(),
        hop=codec.hop,
    )


# --------------------------------------------------------------------------------------------
# Helpers


def _to_host(variables) -> dict:
    """Variables (dicts / FrozenDicts of jax or numpy arrays) -> nested dicts of numpy arrays
    with JAX's canonical dtypes (float64 -> float32 unless x64 is on: what the codec computes
    with, so a tree and its saved copy have the same id)."""
    import flax  # noqa: PLC0415

    if isinstance(variables, flax.core.FrozenDict):
        variables = flax.core.unfreeze(variables)
    variables = jax.device_get(variables)

    def canonical(x):
        x = np.asarray(x)
        return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)

    return jax.tree.map(canonical, variables)


def _leaf_path(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def _flat(tree) -> dict[str, object]:
    return {_leaf_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _hash_variables(variables) -> bytes:
    h = hashlib.sha256()
    for path, leaf in sorted(_flat(_to_host(variables)).items()):
        a = np.ascontiguousarray(leaf)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{path}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.digest()[:16]


def model_id(directory_or_variables) -> bytes:
    """16-byte id of a model: read from ``<dir>/model.json``, or computed from a variables tree.

    The id is that of the stored (weight-normed) variables; a folded tree has a different id.
    """
    if isinstance(directory_or_variables, str | os.PathLike):
        meta = _read_meta(Path(directory_or_variables))
        return bytes.fromhex(meta["model_id"])
    return _hash_variables(directory_or_variables)


def _is_weight_normed(params) -> bool:
    return any(path.endswith("/weight_v") for path in _flat(params))


def _template(config, *, weight_norm: bool, has_encoder: bool) -> dict[str, tuple]:
    """Flat ``path -> (shape, dtype)`` of the variables a config's codec expects."""
    from hificodec_jax.factory import build_codec  # noqa: PLC0415

    codec = build_codec(config, weight_norm=weight_norm)
    dummy = jax.ShapeDtypeStruct((1, codec.hop), np.float32)
    shapes = jax.eval_shape(codec.init, jax.random.key(0), dummy)
    flat = {p: (tuple(s.shape), np.dtype(s.dtype)) for p, s in _flat(shapes).items()}
    if not has_encoder:
        flat = {p: v for p, v in flat.items() if not p.startswith("params/encoder/")}
    return flat


def _check_structure(flat_vars: dict, config, *, weight_norm: bool, has_encoder: bool, where):
    """Raise ValueError naming the first leaf that the config's codec does not expect."""
    want = _template(config, weight_norm=weight_norm, has_encoder=has_encoder)
    for path, x in flat_vars.items():
        if path not in want:
            raise ValueError(f"{where}: variable {path!r} is not in the config's model")
        shape, dtype = want[path]
        if tuple(np.shape(x)) != shape:
            raise ValueError(
                f"{where}: variable {path!r} has shape {tuple(np.shape(x))}, the config's model "
                f"expects {shape}"
            )
    missing = [p for p in want if p not in flat_vars]
    if missing:
        raise ValueError(
            f"{where}: variable {missing[0]!r} is missing ({len(missing)} missing in all)"
        )


def _tuples(x):
    """JSON lists back to tuples (the modules' sequence fields, hashable config values)."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def _config_to_json(config) -> str:
    if hasattr(config, "to_json_best_effort"):
        return config.to_json_best_effort(indent=2, sort_keys=True)
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps(d, indent=2, sort_keys=True, default=str)


def _config_from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_tuples(json.loads(text)))


# --------------------------------------------------------------------------------------------
# Save


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
    from hificodec_jax import __version__  # noqa: PLC0415

    if "://" in os.fspath(directory):
        return _save_remote(os.fspath(directory), config, variables, source, overwrite)
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists (pass overwrite=True to replace it)")
    host = _to_host(variables)
    if not isinstance(host, dict) or "params" not in host:
        raise ValueError("variables must be a dict with a 'params' collection")
    flat = _flat(host)
    bad = [p for p, x in flat.items() if x.dtype.kind in "fc" and not np.all(np.isfinite(x))]
    if bad:
        raise ValueError(f"variable {bad[0]!r} has NaN or infinite values; model not saved")
    has_encoder = "encoder" in host["params"]
    weight_norm = _is_weight_normed(host["params"])
    _check_structure(
        flat, config, weight_norm=weight_norm, has_encoder=has_encoder, where="save_model"
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "model_id": _hash_variables(host).hex(),
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
        (tmp / CONFIG_FILE).write_text(_config_to_json(config))
        with _this_process_checkpointer() as ckptr:
            ckptr.save(tmp / VARIABLES_DIR, host)
            ckptr.wait_until_finished()
        meta["files"] = _file_sizes(tmp / VARIABLES_DIR)
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
    import tempfile  # noqa: PLC0415

    from etils import epath  # noqa: PLC0415

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


def _this_process_checkpointer():
    """An orbax checkpointer that reads/writes host arrays from this process alone: a model
    directory is written by one process (process 0 at the end of a multi-process run), so the
    default all-process barriers would wait forever for the others."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}
        )
    )


def _file_sizes(root: Path) -> dict[str, int]:
    """``relative path -> size`` of every file under ``root`` (the checkpoint's manifest)."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------
# Load


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
    if version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: unknown model format version {version!r} (this hificodec_jax reads "
            f"version {FORMAT_VERSION}; the model was written by hificodec_jax "
            f"{meta.get('hificodec_jax_version', '?')})"
        )
    for key in ("model_id", "has_encoder"):
        if key not in meta:
            raise ModelLoadError(f"{path}: model metadata lacks {key!r}")
    return meta


def load_config_of(directory: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config stored in a model directory."""
    directory = Path(directory)
    _read_meta(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{directory}: missing {CONFIG_FILE}")
    try:
        return _config_from_json(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable config ({e})") from e


def load_variables(directory: str | os.PathLike) -> dict:
    """The stored variables as numpy arrays, verified against the model's id."""
    directory = Path(directory)
    meta = _read_meta(directory)
    path = directory / VARIABLES_DIR
    if not path.is_dir():
        raise ModelNotFoundError(f"{directory}: missing the {VARIABLES_DIR}/ checkpoint")
    for name, size in meta.get("files", {}).items():  # cheap check before orbax reads
        f = path / name
        if not f.is_file():
            raise ModelLoadError(f"{path}: checkpoint file {name!r} is missing")
        if f.stat().st_size != size:
            raise ModelLoadError(
                f"{path}: checkpoint file {name!r} has {f.stat().st_size} bytes, expected "
                f"{size} (truncated or modified)"
            )

    try:
        with _this_process_checkpointer() as ckptr:
            restored = ckptr.restore(path.absolute())
        variables = _to_host(restored)
    except Exception as e:  # orbax / tensorstore raise many types for damaged files
        raise ModelLoadError(
            f"{path}: cannot read the variables checkpoint (truncated or corrupt?): "
            f"{type(e).__name__}: {e}"
        ) from e
    if _hash_variables(variables).hex() != meta["model_id"]:
        raise ModelLoadError(
            f"{path}: the stored arrays do not match the model id {meta['model_id']} in "
            f"{META_FILE} (corrupt or modified checkpoint)"
        )
    return variables


def load(directory: str | os.PathLike, *, inference: bool = True):
    """``(codec, variables)`` of a model directory.

    ``inference=True`` (default): the weight-norm-folded codec (``build_codec(config,
    weight_norm=False)``) with folded params: same outputs, no norm computed per call.
    ``inference=False``: the codec and variables exactly as stored (for fine-tuning).
    Variables come back on the default device. A decoder-only model's codec raises
    :class:`MissingEncoderError` when asked to encode. Errors: :class:`ModelNotFoundError`
    (missing directory or files), :class:`ModelLoadError` (corrupt checkpoint, unknown format
    version, config and weights that do not fit together).
    """
    from hificodec_jax.models.layers import fold_weight_norm  # noqa: PLC0415

    directory = Path(directory)
    meta = _read_meta(directory)
    config = load_config_of(directory)
    variables = load_variables(directory)
    has_encoder = bool(meta["has_encoder"])
    weight_norm = _is_weight_normed(variables["params"])
    try:
        _check_structure(
            _flat(variables),
            config,
            weight_norm=weight_norm,
            has_encoder=has_encoder,
            where=str(directory),
        )
    except ValueError as e:
        raise ModelLoadError(f"config and variables do not fit: {e}") from e
    if inference:
        if weight_norm:
            variables = {**variables, "params": fold_weight_norm(variables["params"])}
        codec = _build(config, weight_norm=False, has_encoder=has_encoder)
    else:
        if not weight_norm:
            raise ModelLoadError(
                f"{directory}: the model was saved with folded weights; load it with inference=True"
            )
        codec = _build(config, weight_norm=True, has_encoder=has_encoder)
    return codec, jax.device_put(variables)
