"""``hificodec_jax.load``: a model's name or directory -> a ready codec, in one straight line.

    name --hub.resolve--> directory --model_dir.read_model--> files --build_codec--> Model

Each file of the directory is read once and the codec is built once. The :class:`Model` unpacks
as ``codec, variables = hificodec_jax.load(...)`` for ``codec.apply``; it also carries what
files and tools need (config, model id, directory).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections

from hificodec_jax.factory import build_codec
from hificodec_jax.hub import resolve
from hificodec_jax.model_dir import ModelLoadError, check_structure, read_model
from hificodec_jax.models.codec import Codec
from hificodec_jax.models.layers import fold_weight_norm

__all__ = ["Model", "load"]


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded model: ``codec`` (a linen module) and its ``variables``, with the stored
    ``config``, 16-byte ``model_id`` and ``directory``. It unpacks (and indexes) as the pair ``(codec, variables)``."""

    codec: Codec
    variables: Any
    config: ml_collections.ConfigDict
    model_id: bytes
    directory: Path

    def __iter__(self) -> Iterator[Any]:
        return iter((self.codec, self.variables))

    def __getitem__(self, index):  # load(...)[0] as when load returned a tuple
        return (self.codec, self.variables)[index]

    def __len__(self) -> int:
        return 2

    @property
    def sample_rate(self) -> int:
        return int(self.config.audio.sample_rate)


def load(
    model: str | os.PathLike,
    *,
    inference: bool = True,
    revision: str | None = None,
    precision: str = "float32",
) -> Model:
    """The :class:`Model` of a model directory, or of a released model by name.

    ``model`` is a directory written by ``save_model`` / ``hificodec-jax convert`` / training
    (``<workdir>/export``), or one of :func:`hificodec_jax.model_names`
    (``"hificodec-16k-320d"``), downloaded from the Hugging Face Hub and converted on first use
    (``revision``: a branch, tag or commit of the Hub repository). ``inference=True``
    (default): the weight-norm-folded codec (``build_codec(config, weight_norm=False)``) with
    folded params: same outputs, no norm computed per call. ``inference=False``: the codec and
    variables exactly as stored (for fine-tuning). Variables come back on the default device.
    A decoder-only model's codec raises ``MissingEncoderError`` when asked to encode.
    ``precision``: compute dtype, float32 whatever training used (``"bfloat16"`` on
    accelerators). Errors: ``ModelNotFoundError`` (missing directory or files, unknown name),
    ``ModelLoadError`` (corrupt weights, unknown format version, config and weights that do not
    fit together), ``ModelDownloadError`` (download or conversion failed).
    """
    files = read_model(resolve(model, revision=revision))
    config = files.config
    config.precision = precision
    variables = files.variables
    if not inference and not files.weight_norm:
        raise ModelLoadError(
            f"{files.directory}: the model was saved with folded weights; load it with "
            "inference=True"
        )
    codec = build_codec(config, weight_norm=not inference, has_encoder=files.has_encoder)
    try:
        if inference and files.weight_norm:
            variables = {**variables, "params": fold_weight_norm(variables["params"])}
        check_structure(variables, codec, where=str(files.directory))
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"config and variables do not fit: {e}") from e
    return Model(codec, jax.device_put(variables), config, files.model_id, files.directory)
