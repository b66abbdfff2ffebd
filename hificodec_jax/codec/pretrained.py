"""Released HiFi-Codec models by name: downloaded from the Hugging Face Hub, converted once.

    codec, variables = hificodec_jax.load("hificodec-16k-320d")
    $ hificodec-jax download hificodec-16k-320d      # prints the model directory

The checkpoints are the reference authors' ``torch.save`` files (``g_`` dicts with
``generator``, ``encoder``, ``quantizer``; MIT licence) in the Hub model repository
``Dongchao/AcademiCodec``; their architectures ship in :mod:`hificodec_jax.presets`.

Downloads go through ``huggingface_hub.hf_hub_download``, so its cache and settings apply:
``HF_HOME`` / ``HF_HUB_CACHE`` (where the ``.pth`` files go), ``HF_ENDPOINT`` (a mirror),
``HF_HUB_OFFLINE=1`` (cached copies only), ``HF_TOKEN``; ``revision`` pins a branch, tag or
commit. Each (repository, file, commit) is converted once, with the torch-free reader, into a
model directory (:mod:`hificodec_jax.codec.model_io`) at
``huggingface_hub.cached_assets_path("hificodec_jax", "<owner>--<repo>", "<commit>")/<file>/``
(``$HF_HOME/assets/hificodec_jax/...`` by default), written atomically under a file lock. A later
call finds it there and neither downloads nor converts (online, the Hub answers one metadata
request; offline or with a commit as ``revision``, no request at all).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path, PurePosixPath

from hificodec_jax.codec.model_files import ModelLoadError

REPO_ID = "Dongchao/AcademiCodec"


@dataclasses.dataclass(frozen=True)
class HubModel:
    """Where a named model lives on the Hub and which config it loads into.

    ``config`` is a preset name (:mod:`hificodec_jax.presets`) or a config file path;
    ``revision`` (a branch, tag or commit) is the default one to download.
    """

    repo_id: str
    filename: str
    config: str
    revision: str | None = None


# The reference's files on the Hub; the large-universal model uses the 16k-320d architecture.
MODELS: dict[str, HubModel] = {
    "hificodec-16k-320d": HubModel(REPO_ID, "HiFi-Codec-16k-320d", "hificodec-16k-320d"),
    "hificodec-16k-320d-large-universal": HubModel(
        REPO_ID, "HiFi-Codec-16k-320d-large-universal", "hificodec-16k-320d-large-universal"
    ),
    "hificodec-24k-240d": HubModel(REPO_ID, "HiFi-Codec-24k-240d", "hificodec-24k-240d"),
    "hificodec-24k-320d": HubModel(REPO_ID, "HiFi-Codec-24k-320d", "hificodec-24k-320d"),
}


class ModelDownloadError(ModelLoadError):
    """A named model could not be downloaded or converted (or is not cached while offline)."""


def model_names() -> list[str]:
    """The names ``load`` and ``hificodec-jax download`` accept, sorted."""
    return sorted(MODELS)


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a registered model name."""
    return name in MODELS


def register(name: str, model: HubModel) -> None:
    """Make ``name`` load ``model`` (a checkpoint in the reference's format on a Hub repo)."""
    MODELS[name] = model


def _entry(name: str) -> HubModel:
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; one of {', '.join(model_names())}")
    return MODELS[name]


def _fetch_checkpoint(name: str, entry: HubModel, revision: str | None, force: bool) -> str:
    """The cached ``.pth`` path (downloaded if needed) or a :class:`ModelDownloadError`."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from hificodec_jax import __version__

    where = f"{entry.repo_id}/{entry.filename}" + (f"@{revision}" if revision else "")
    try:
        return hf_hub_download(
            entry.repo_id,
            entry.filename,
            revision=revision,
            force_download=force,
            library_name="hificodec_jax",
            library_version=__version__,
        )
    except LocalEntryNotFoundError as e:
        why = (
            "offline mode is on (HF_HUB_OFFLINE)"
            if constants.HF_HUB_OFFLINE
            else f"the Hub cannot be reached: {e.__cause__ or e}"
        )
        raise ModelDownloadError(
            f"model {name!r} ({where} on the Hugging Face Hub) is not in the local cache and "
            f"{why}. Download it once with network access (`hificodec-jax download {name}`), "
            "or point HF_HOME at a cache that holds it"
        ) from e
    except Exception as e:  # HTTP errors, broken transfers, a wrong revision: all one message
        raise ModelDownloadError(
            f"downloading model {name!r} ({where}) failed: {type(e).__name__}: {e}"
        ) from e


def _commit_of(pth: str, filename: str) -> str:
    """The commit hash in a Hub cache path ``.../snapshots/<commit>/<filename>``."""
    return Path(pth).parents[len(PurePosixPath(filename).parts) - 1].name


def download(name: str, *, revision: str | None = None, force_download: bool = False) -> str:
    """The local model directory of a named model, downloaded and converted on first use.

    ``revision`` overrides the registered one; ``force_download`` fetches the checkpoint again
    and reconverts it (a damaged download). Raises ``ValueError`` listing the valid names for
    an unknown name, :class:`ModelDownloadError` when the checkpoint cannot be had or converted
    (no model directory is left behind then).
    """
    from filelock import FileLock
    from huggingface_hub import cached_assets_path

    from hificodec_jax.codec.convert import CheckpointMismatchError, convert_checkpoint
    from hificodec_jax.codec.model_io import META_FILE
    from hificodec_jax.codec.pth_reader import CheckpointFormatError

    entry = _entry(name)
    revision = revision or entry.revision
    pth = _fetch_checkpoint(name, entry, revision, force_download)
    commit = _commit_of(pth, entry.filename)
    namespace = entry.repo_id.replace("/", "--")
    out = cached_assets_path("hificodec_jax", namespace=namespace, subfolder=commit)
    out = out / entry.filename
    if (out / META_FILE).is_file() and not force_download:
        return str(out)
    with FileLock(f"{out}.lock"):
        if (out / META_FILE).is_file() and not force_download:
            return str(out)  # another process converted it meanwhile
        try:
            convert_checkpoint(
                pth,
                entry.config,
                out,
                overwrite=True,
                source=f"{entry.repo_id}/{entry.filename}@{commit}",
            )
        except (CheckpointFormatError, CheckpointMismatchError) as e:
            raise ModelDownloadError(
                f"model {name!r}: the downloaded checkpoint cannot be converted ({e}); if the "
                f"download is damaged, fetch it again: `hificodec-jax download {name} --force`"
            ) from e
    return str(out)


# --------------------------------------------------------------------------------------------
# ``hificodec-jax download``


def add_download_command(subparsers) -> None:
    """Add ``download NAME [--revision R] [--force]`` to the CLI's subcommands."""
    d = subparsers.add_parser(
        "download",
        help="download and convert a released model by name; prints its model directory",
        description=f"Released models: {', '.join(model_names())}. The printed directory "
        "works as --model; so does the name itself.",
    )
    d.add_argument("name", help="a released model's name, e.g. hificodec-16k-320d")
    d.add_argument("--revision", default=None, help="branch, tag or commit on the Hub")
    d.add_argument("--force", action="store_true", help="download and convert again")
    d.set_defaults(fn=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> None:
    print(download(args.name, revision=args.revision, force_download=args.force))
