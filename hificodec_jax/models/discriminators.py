"""HiFi-Codec's discriminators: all three families together, and one sub-discriminator at a time.

The families live in their own modules: HiFi-GAN's MPD (:mod:`.period_discriminator`) and MSD
(:mod:`.scale_discriminator`), Encodec's MS-STFT D (:mod:`.stft_discriminator`); their public
names are re-exported here. Every sub-discriminator maps ``wav [B, T]`` to ``(logits, fmaps)``;
layout is channels-last. Reference: AcademiCodec ``hificodec/models.py`` and
``encodec/msstftd.py`` (spec section 5). Parity was checked once against torch 2.13's
``weight_norm``/``spectral_norm``/``AvgPool1d``/``stft`` on the full-width modules (max
relative error 5e-6 on every fmap, logits and u/v).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax

from hificodec_jax.models.period_discriminator import (
    MPD_CHANNELS,
    MultiPeriodDiscriminator,
    PeriodDiscriminator,
)
from hificodec_jax.models.scale_discriminator import (
    MSD_LAYERS,
    GroupedConv1d,
    MultiScaleDiscriminator,
    ScaleDiscriminator,
    avg_pool_1d,
    grouped_conv1d,
    spectral_normalize,
)
from hificodec_jax.models.stft_discriminator import (
    STFT_N_FFTS,
    MultiScaleSTFTDiscriminator,
    STFTDiscriminator,
)

__all__ = [
    "FAMILIES",
    "FAMILY_MODULES",
    "SubDiscriminator",
    "assemble",
    "sub_discriminators",
    "MPD_CHANNELS",
    "MSD_LAYERS",
    "Discriminators",
    "GroupedConv1d",
    "MultiPeriodDiscriminator",
    "MultiScaleDiscriminator",
    "MultiScaleSTFTDiscriminator",
    "PeriodDiscriminator",
    "STFTDiscriminator",
    "ScaleDiscriminator",
    "avg_pool_1d",
    "grouped_conv1d",
    "spectral_normalize",
]

FAMILIES = ("mpd", "msd", "stft")
FAMILY_MODULES = {"mpd": "mpd", "msd": "msd", "stft": "mstftd"}  # submodule (= checkpoint) names


# --------------------------------------------------------------------------------------------
# All families
# --------------------------------------------------------------------------------------------


class Discriminators(nn.Module):
    """The selected discriminator families of HiFi-Codec's GAN loss.

    ``__call__(wav [B, T], *, update_stats=False) -> {family: [(logits, fmaps), ...]}`` with
    families from ``("mpd", "msd", "stft")`` (5 + 3 + 5 sub-discriminators; dict in
    ``families`` order). Submodules are named like the reference checkpoint's ``do_`` sections:
    ``mpd``, ``msd``, ``mstftd``. ``update_stats`` only affects MSD's spectral norm (needs
    ``mutable=["spectral"]``). The MS-STFT family needs ``T >= max(stft_n_ffts)`` (2048).
    """

    families: Sequence[str] = FAMILIES
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    stft_n_ffts: Sequence[int] = STFT_N_FFTS
    split_groups: bool = True
    # Widths: the reference's by default; narrower ones only for tests and tiny configs.
    mpd_channels: Sequence[int] = MPD_CHANNELS
    msd_layers: Sequence[tuple[int, int, int, int]] = MSD_LAYERS
    stft_filters: int = 32

    def setup(self):
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown discriminator families {sorted(unknown)}; use {FAMILIES}")
        if "mpd" in self.families:
            self.mpd = MultiPeriodDiscriminator(self.periods, self.mpd_channels)
        if "msd" in self.families:
            self.msd = MultiScaleDiscriminator(
                split_groups=self.split_groups, layers=self.msd_layers
            )
        if "stft" in self.families:
            self.mstftd = MultiScaleSTFTDiscriminator(self.stft_n_ffts, self.stft_filters)

    def __call__(
        self, wav: jax.Array, *, update_stats: bool = False
    ) -> dict[str, list[tuple[jax.Array, list[jax.Array]]]]:
        if wav.ndim != 2:
            raise ValueError(f"expected wav [B, T], got shape {wav.shape}")
        out = {}
        for family in self.families:
            if family == "mpd":
                out[family] = self.mpd(wav)
            elif family == "msd":
                out[family] = self.msd(wav, update_stats=update_stats)
            else:
                out[family] = self.mstftd(wav)
        return out


# --------------------------------------------------------------------------------------------
# Sub-discriminators one at a time
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SubDiscriminator:
    """One sub-discriminator of :class:`Discriminators` as a standalone module.

    Its variables are the subtree ``variables[collection][family module][name]`` of the whole
    model's (``path``), so a train step can run (and differentiate) one sub-discriminator at a
    time: the activations of only one are alive at once, and the sub-discriminators' parameter
    gradients are disjoint subtrees of the whole gradient.
    """

    family: str  # "mpd" | "msd" | "stft"
    index: int  # position within the family
    module: nn.Module  # unbound PeriodDiscriminator / ScaleDiscriminator / STFTDiscriminator
    pools: int = 0  # MSD: AvgPool1d(4, 2, 2) applied this many times to the input first
    spectral: bool = False  # MSD's spectral-normed first scale (has "spectral" variables)

    @property
    def num_fmaps(self) -> int:
        """Feature maps it returns (static; the normalised feature matching averages them)."""
        return self.module.num_fmaps

    @property
    def path(self) -> tuple[str, str]:
        return FAMILY_MODULES[self.family], f"discriminators_{self.index}"

    def subtree(self, tree):
        """This sub-discriminator's part of a ``params``/``spectral`` tree (``{}`` if absent)."""
        family, name = self.path
        return tree.get(family, {}).get(name, {})

    def apply(self, params, spectral, wav: jax.Array, *, update_stats: bool = False):
        """``wav [B, T] -> ((logits, fmaps), new spectral subtree)`` with this one's variables.

        Equals the corresponding entry of ``Discriminators.__call__`` (``params``/``spectral``
        are this sub-discriminator's subtrees).
        """
        for _ in range(self.pools):
            wav = avg_pool_1d(wav)
        if not self.spectral:
            return self.module.apply({"params": params}, wav), {}
        out, upd = self.module.apply(
            {"params": params, "spectral": spectral},
            wav,
            update_stats=update_stats,
            mutable=["spectral"],
        )
        return out, upd["spectral"]


def sub_discriminators(discs: Discriminators) -> list[SubDiscriminator]:
    """The sub-discriminators of ``discs`` in its output order (families, then index)."""
    units = []
    for family in discs.families:
        if family == "mpd":
            for i, p in enumerate(discs.periods):
                units.append(
                    SubDiscriminator(family, i, PeriodDiscriminator(p, channels=discs.mpd_channels))
                )
        elif family == "msd":
            for i in range(MultiScaleDiscriminator.num_scales):
                module = ScaleDiscriminator(i == 0, discs.split_groups, discs.msd_layers)
                units.append(SubDiscriminator(family, i, module, pools=i, spectral=i == 0))
        elif family == "stft":
            for i, n in enumerate(discs.stft_n_ffts):
                module = STFTDiscriminator(n_fft=n, hop_length=n // 4, filters=discs.stft_filters)
                units.append(SubDiscriminator(family, i, module))
        else:
            raise ValueError(f"unknown discriminator family {family!r}; use {FAMILIES}")
    return units


def assemble(units: list[SubDiscriminator], parts: list) -> dict:
    """Per-sub-discriminator subtrees (``parts[i]`` for ``units[i]``) -> one nested tree."""
    tree: dict = {}
    for unit, part in zip(units, parts, strict=True):
        family, name = unit.path
        if part:
            tree.setdefault(family, {})[name] = part
    return tree
