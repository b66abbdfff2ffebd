"""A self-describing model directory, and loading a codec in one call.

Layout of a model directory (format version 2)::

    <dir>/config.json         the full config (``ConfigDict.to_json_best_effort``)
    <dir>/model.safetensors   the variables, flat ``"params/decoder/conv_pre/weight_v"`` keys
    <dir>/model.json          {format_version, model_id, has_encoder, weight_norm, source,
                               hificodec_jax_version, files: {file: size}}

JSON plus safetensors is what the Hugging Face Hub and other frameworks read. Directories of
format version 1 (hificodec_jax 0.1: the variables as an orbax checkpoint in ``variables/``)
still load; reading them needs ``orbax-checkpoint`` (the ``[train]`` extra).

``save_model`` writes everything into a hidden sibling temp directory and renames it into place
at the end, so a crash never leaves a half-written model directory behind. ``model_id`` is the
first 16 bytes of a SHA-256 over the stored variables (every leaf, in sorted path order: path,
dtype, shape and bytes), so two directories holding the same weights have the same id, whatever
their format version. ``load`` checks the file sizes against ``files`` before reading (a
truncated or missing file is reported as such), then recomputes the id and refuses arrays that
no longer match.

A released model's name is looked up in :mod:`hificodec_jax.codec.pretrained` (downloaded from
the Hugging Face Hub and converted once). :func:`hificodec_jax.codec.convert.convert_checkpoint`
turns a released AcademiCodec ``.pth`` (read without torch) into a model directory. A
checkpoint without an ``encoder`` state dict becomes a decoder-only model: it stores no encoder
weights, decodes as usual, and its codec raises :class:`MissingEncoderError` from
``encode``/``encode_latent``/``__call__``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import jax
import ml_collections
import numpy as np

from hificodec_jax.codec.model_files import (
    VARIABLES_DIR,
    ModelLoadError,
    ModelNotFoundError,
    config_from_json,
    config_to_json,
    flat,
    hash_variables,
    read_orbax,
    read_weights,
    to_host,
    write_weights,
)
from hificodec_jax.models.codec import Codec

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_FILE, META_FILE, WEIGHTS_FILE = "config.json", "model.json", "model.safetensors"


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
    from hificodec_jax.factory import build_codec

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


def model_id(directory_or_variables) -> bytes:
    """16-byte id of a model: read from ``<dir>/model.json`` (a directory or a released model's
    name), or computed from a variables tree.

    The id is that of the stored (weight-normed) variables; a folded tree has a different id.
    """
    if isinstance(directory_or_variables, str | os.PathLike):
        meta = _read_meta(resolve(directory_or_variables))
        return bytes.fromhex(meta["model_id"])
    return hash_variables(directory_or_variables)


def _is_weight_normed(params) -> bool:
    return any(path.endswith("/weight_v") for path in flat(params))


def _template(config, *, weight_norm: bool, has_encoder: bool) -> dict[str, tuple]:
    """Flat ``path -> (shape, dtype)`` of the variables a config's codec expects."""
    from hificodec_jax.factory import build_codec

    codec = build_codec(config, weight_norm=weight_norm)
    dummy = jax.ShapeDtypeStruct((1, codec.hop), np.float32)
    shapes = jax.eval_shape(codec.init, jax.random.key(0), dummy)
    out = {p: (tuple(s.shape), np.dtype(s.dtype)) for p, s in flat(shapes).items()}
    if not has_encoder:
        out = {p: v for p, v in out.items() if not p.startswith("params/encoder/")}
    return out


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
    from hificodec_jax import __version__

    if "://" in os.fspath(directory):
        return _save_remote(os.fspath(directory), config, variables, source, overwrite)
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} exists (pass overwrite=True to replace it)")
    host = to_host(variables)
    if not isinstance(host, dict) or "params" not in host:
        raise ValueError("variables must be a dict with a 'params' collection")
    leaves = flat(host)
    bad = [p for p, x in leaves.items() if x.dtype.kind in "fc" and not np.all(np.isfinite(x))]
    if bad:
        raise ValueError(f"variable {bad[0]!r} has NaN or infinite values; model not saved")
    has_encoder = "encoder" in host["params"]
    weight_norm = _is_weight_normed(host["params"])
    _check_structure(
        leaves, config, weight_norm=weight_norm, has_encoder=has_encoder, where="save_model"
    )
    ident = hash_variables(host).hex()
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
        write_weights(tmp / WEIGHTS_FILE, host, ident)
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
    import tempfile

    from etils import epath

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
# Load


def resolve(model: str | os.PathLike, *, revision: str | None = None) -> Path:
    """The local directory of ``model``: a model directory as given, or a released model's name
    (``"hificodec-16k-320d"``), downloaded and converted on first use
    (:func:`hificodec_jax.codec.pretrained.download`)."""
    path = Path(model)
    if path.exists() or not isinstance(model, str):
        return path
    from hificodec_jax.codec import pretrained

    if pretrained.is_model_name(model):
        return Path(pretrained.download(model, revision=revision))
    raise ModelNotFoundError(
        f"no model directory {model!r}, and no released model of that name (one of "
        f"{', '.join(pretrained.model_names())})"
    )


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


def load_config_of(model: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config stored in a model directory (or of a released model, by name)."""
    directory = resolve(model)
    _read_meta(directory)
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


def load_variables(model: str | os.PathLike) -> dict:
    """The stored variables as numpy arrays, verified against the model's id."""
    directory = resolve(model)
    meta = _read_meta(directory)
    if meta["format_version"] == 1:
        root = directory / VARIABLES_DIR
        if root.is_dir():
            _check_sizes(root, meta.get("files", {}))
        variables = to_host(read_orbax(root))
    else:
        _check_sizes(directory, meta.get("files", {}))
        variables = to_host(read_weights(directory / WEIGHTS_FILE))
    if hash_variables(variables).hex() != meta["model_id"]:
        raise ModelLoadError(
            f"{directory}: the stored arrays do not match the model id {meta['model_id']} in "
            f"{META_FILE} (corrupt or modified weights)"
        )
    return variables


def load(
    model: str | os.PathLike,
    *,
    inference: bool = True,
    revision: str | None = None,
    precision: str = "float32",
):
    """``(codec, variables)`` of a model directory, or of a released model by name.

    ``model`` is a directory written by :func:`save_model` / ``convert_checkpoint`` / training,
    or one of :func:`hificodec_jax.codec.pretrained.model_names` (``"hificodec-16k-320d"``),
    downloaded from the Hugging Face Hub and converted on first use (``revision``: a branch,
    tag or commit of the Hub repository). ``inference=True`` (default): the
    weight-norm-folded codec (``build_codec(config, weight_norm=False)``) with folded params:
    same outputs, no norm computed per call. ``inference=False``: the codec and variables
    exactly as stored (for fine-tuning). Variables come back on the default device. A
    decoder-only model's codec raises :class:`MissingEncoderError` when asked to encode.
    Errors: :class:`ModelNotFoundError` (missing directory or files, unknown name),
    :class:`ModelLoadError` (corrupt weights, unknown format version, config and weights that
    do not fit together), ``pretrained.ModelDownloadError`` (download or conversion failed).
    ``precision``: compute dtype, float32 whatever training used (``"bfloat16"`` on accelerators).
    """
    from hificodec_jax.models.layers import fold_weight_norm

    directory = resolve(model, revision=revision)
    meta = _read_meta(directory)
    config = load_config_of(directory)
    config.precision = precision
    variables = load_variables(directory)
    has_encoder = bool(meta["has_encoder"])
    weight_norm = _is_weight_normed(variables["params"])
    try:
        _check_structure(
            flat(variables),
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
