"""Released HiFi-Codec models by name: model name -> local model directory.

    codec, variables = hificodec_jax.load("hificodec-16k-320d")
    $ hificodec-jax download hificodec-16k-320d      # prints the model directory

The names, architectures and Hub files are the one table :data:`hificodec_jax.presets.PRESETS`.
The checkpoints are the reference authors' ``torch.save`` files (``g_`` dicts with
``generator``, ``encoder``, ``quantizer``; MIT licence) in the Hub model repository
``Dongchao/AcademiCodec``.

Downloads go through ``huggingface_hub.hf_hub_download``, so its cache and settings apply:
``HF_HOME`` / ``HF_HUB_CACHE`` (where the ``.pth`` files go), ``HF_ENDPOINT`` (a mirror),
``HF_HUB_OFFLINE=1`` (cached copies only), ``HF_TOKEN``; ``revision`` pins a branch, tag or
commit. Each (repository, file, commit) is converted once, with the torch-free reader
(:mod:`hificodec_jax.reference.convert`), into a model directory (:mod:`hificodec_jax.model_dir`)
at ``huggingface_hub.cached_assets_path("hificodec_jax", "<owner>--<repo>", "<commit>")/<file>/``
(``$HF_HOME/assets/hificodec_jax/...`` by default), written atomically under a file lock. A later
call finds it there and neither downloads nor converts (online, the Hub answers one metadata
request; offline or with a commit as ``revision``, no request at all). When the Hub's host
cannot be reached, only the local cache is used: the answer comes in about a second instead of
after the Hub client's retries.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path, PurePosixPath

from filelock import FileLock

from hificodec_jax import __version__, presets
from hificodec_jax.model_dir import META_FILE, ModelLoadError, ModelNotFoundError
from hificodec_jax.reference import convert
from hificodec_jax.reference.pth import CheckpointFormatError

__all__ = ["ModelDownloadError", "download", "is_model_name", "model_names", "resolve"]

_PROBE_TIMEOUT_S = 2.0  # a reachable Hub answers a TCP connect far faster


class ModelDownloadError(ModelLoadError):
    """A named model could not be downloaded or converted (or is not cached while offline)."""


def model_names() -> list[str]:
    """The names ``load`` and ``hificodec-jax download`` accept, sorted."""
    return presets.preset_names()


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a released model's name."""
    return name in presets.PRESETS


def resolve(model: str | os.PathLike, *, revision: str | None = None) -> Path:
    """The local directory of ``model``: a model directory as given, or a released model's name
    (``"hificodec-16k-320d"``), downloaded and converted on first use (:func:`download`)."""
    path = Path(model)
    if path.exists() or not isinstance(model, str):
        return path
    if is_model_name(model):
        return Path(download(model, revision=revision))
    raise ModelNotFoundError(
        f"no model directory {model!r}, and no released model of that name (one of "
        f"{', '.join(model_names())})"
    )


def _hub_reachable() -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within a second or two."""
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _offline_help(name: str) -> str:
    return (
        f"To use it on a machine without network access, run `hificodec-jax download {name}` "
        "where the Hub is reachable and copy that machine's Hugging Face cache (HF_HOME, "
        "default ~/.cache/huggingface) here, or copy the printed model directory and pass it "
        "as --model; or convert the reference's .pth with `hificodec-jax convert`"
    )


def _fetch_checkpoint(name: str, entry: presets.Preset, revision: str | None, force: bool) -> str:
    """The cached ``.pth`` path (downloaded if needed) or a :class:`ModelDownloadError`."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"{entry.repo_id}/{entry.hub_file}" + (f"@{revision}" if revision else "")
    offline = constants.HF_HUB_OFFLINE or not _hub_reachable()
    try:
        return hf_hub_download(
            entry.repo_id,
            entry.hub_file,
            revision=revision,
            force_download=force and not offline,
            local_files_only=offline,
            library_name="hificodec_jax",
            library_version=__version__,
        )
    except LocalEntryNotFoundError as e:
        why = (
            "offline mode is on (HF_HUB_OFFLINE)"
            if constants.HF_HUB_OFFLINE
            else f"the Hub ({constants.ENDPOINT}) cannot be reached"
        )
        raise ModelDownloadError(
            f"model {name!r} ({where} on the Hugging Face Hub) is not in the local cache and "
            f"{why}. {_offline_help(name)}"
        ) from e
    except Exception as e:  # HTTP errors, broken transfers, a wrong revision: all one message
        raise ModelDownloadError(
            f"downloading model {name!r} ({where}) failed: {type(e).__name__}: {e}"
        ) from e


def _commit_of(pth: str, filename: str) -> str:
    """The commit hash in a Hub cache path ``.../snapshots/<commit>/<filename>``."""
    return Path(pth).parents[len(PurePosixPath(filename).parts) - 1].name


def download(name: str, *, revision: str | None = None, force_download: bool = False) -> str:
    """The local model directory of a released model, downloaded and converted on first use.

    ``revision`` overrides the table's; ``force_download`` fetches the checkpoint again and
    reconverts it (a damaged download). Raises :class:`ModelNotFoundError` listing the valid
    names for an unknown name, :class:`ModelDownloadError` when the checkpoint cannot be had or
    converted (no model directory is left behind then).
    """
    from huggingface_hub import cached_assets_path

    if not is_model_name(name):
        raise ModelNotFoundError(f"unknown model name {name!r}; one of {', '.join(model_names())}")
    entry = presets.PRESETS[name]
    revision = revision or entry.revision
    pth = _fetch_checkpoint(name, entry, revision, force_download)
    commit = _commit_of(pth, entry.hub_file)
    namespace = entry.repo_id.replace("/", "--")
    out = cached_assets_path("hificodec_jax", namespace=namespace, subfolder=commit)
    out = out / entry.hub_file
    if (out / META_FILE).is_file() and not force_download:
        return str(out)
    with FileLock(f"{out}.lock"):
        if (out / META_FILE).is_file() and not force_download:
            return str(out)  # another process converted it meanwhile
        try:
            convert.convert_checkpoint(
                pth,
                presets.get_config(name),
                out,
                overwrite=True,
                source=f"{entry.repo_id}/{entry.hub_file}@{commit}",
            )
        except (CheckpointFormatError, convert.CheckpointMismatchError) as e:
            raise ModelDownloadError(
                f"model {name!r}: the downloaded checkpoint cannot be converted ({e}); if the "
                f"download is damaged, fetch it again: `hificodec-jax download {name} --force`"
            ) from e
    return str(out)
