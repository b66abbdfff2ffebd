"""The released HiFi-Codec models, by name: their architectures and where their weights are.

The one table of released models. ``load_config("hificodec-16k-320d")`` reads the
architecture from here, so it works from any directory and from an installed wheel;
``hificodec_jax.load("hificodec-16k-320d")`` also fetches the weights named here
(:mod:`hificodec_jax.hub`). The training recipes in ``configs/`` (``configs/grvq4.py`` ...)
build on the same definitions.

Values come from the reference's ``egs/HiFi-Codec-*/config_*.json`` ("ref").
"""

from __future__ import annotations

import dataclasses

import ml_collections

from hificodec_jax import config_defaults as d

# The reference authors' ``torch.save`` files (MIT licence) on the Hugging Face Hub.
HUB_REPO = "Dongchao/AcademiCodec"


@dataclasses.dataclass(frozen=True)
class Preset:
    """One released model: rate, decoder rates/kernels, the reference's batch, and its file in
    the Hub repository ``repo_id`` (``revision``: a branch, tag or commit; None = main)."""

    hub_file: str
    sample_rate: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    segment_size: int
    batch_size: int
    description: str
    repo_id: str = HUB_REPO
    revision: str | None = None


_16K_320D = Preset(
    hub_file="HiFi-Codec-16k-320d",
    sample_rate=16000,  # ref sampling_rate
    upsample_rates=(8, 5, 4, 2),  # ref, hop 320
    upsample_kernel_sizes=(16, 11, 8, 4),  # ref
    segment_size=16000,  # ref segment_size
    batch_size=64,  # ref: 8 per GPU x 8 GPUs
    description="16 kHz, hop 320 (50 frames/s), 2 groups x 2 levels x 1024 codes = 2 kbps",
)

PRESETS: dict[str, Preset] = {
    "hificodec-16k-320d": _16K_320D,
    # Same architecture, trained by the reference's authors on a larger, more varied corpus.
    "hificodec-16k-320d-large-universal": dataclasses.replace(
        _16K_320D, hub_file="HiFi-Codec-16k-320d-large-universal"
    ),
    "hificodec-24k-240d": Preset(
        hub_file="HiFi-Codec-24k-240d",
        sample_rate=24000,  # ref sampling_rate
        upsample_rates=(8, 5, 3, 2),  # ref, hop 240
        upsample_kernel_sizes=(16, 11, 7, 4),  # ref
        segment_size=12000,  # ref segment_size
        batch_size=32,  # ref batch_size (global)
        description="24 kHz, hop 240 (100 frames/s), 2 x 2 x 1024 codes = 4 kbps",
    ),
    "hificodec-24k-320d": Preset(
        hub_file="HiFi-Codec-24k-320d",
        sample_rate=24000,  # ref sampling_rate
        upsample_rates=(8, 5, 4, 2),  # ref, hop 320
        upsample_kernel_sizes=(16, 11, 8, 4),  # ref
        segment_size=16000,  # ref segment_size
        batch_size=80,  # ref batch_size (global)
        description="24 kHz, hop 320 (75 frames/s), 2 x 2 x 1024 codes = 3 kbps",
    ),
}

# The released models were trained with the reference's objective (gradient-trained codebooks).
RELEASED_RECIPE = "academicodec"


def preset_names() -> list[str]:
    """The preset names, sorted."""
    return sorted(PRESETS)


def recipe(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """A training recipe on a preset's architecture: ``arg`` as in ``configs/*.py``
    (``None`` = reference losses with EMA codebooks, ``"academicodec"``, ``"paper"``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {preset_names()}")
    p = PRESETS[name]
    model = d.hifigan_model_config(
        upsample_rates=p.upsample_rates, upsample_kernel_sizes=p.upsample_kernel_sizes
    )
    config = d.base_config(p.sample_rate, model, arg)
    config.data.segment_size = p.segment_size
    config.batch_size = p.batch_size
    return config


def get_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The released model's config (``arg`` defaults to the recipe it was trained with)."""
    return recipe(name, arg or RELEASED_RECIPE)
