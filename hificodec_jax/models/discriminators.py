"""HiFi-Codec's discriminators: the family registry, all families together, and one at a time.

Each family lives in its own module and owns its sub-discriminators (their networks, inputs,
spectral-norm state and parameter paths): HiFi-GAN's MPD (:mod:`.period_discriminator`) and
MSD (:mod:`.scale_discriminator`), Encodec's MS-STFT D (:mod:`.stft_discriminator`). Adding a
family is one module with a ``family(options)`` builder plus one line in :data:`REGISTRY`.
:class:`Discriminators` and :func:`sub_discriminators` (the train step's one-at-a-time path)
are built from the same :class:`~.discriminator_units.SubDiscriminator` units. Every
sub-discriminator maps ``wav [B, T]`` to ``(logits, fmaps)``; layout is channels-last.
Reference: AcademiCodec ``hificodec/models.py`` and ``encodec/msstftd.py`` (spec section 5).
Parity was checked once against torch 2.13's ``weight_norm``/``spectral_norm``/``AvgPool1d``/
``stft`` on the full-width modules (max relative error 5e-6 on every fmap, logits and u/v).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hificodec_jax.models import period_discriminator, scale_discriminator, stft_discriminator
from hificodec_jax.models.discriminator_units import (
    DiscriminatorFamily,
    SubDiscriminator,
    assemble,
)
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
    power_iterations,
    spectral_normalize,
)
from hificodec_jax.models.stft_discriminator import (
    STFT_N_FFTS,
    MultiScaleSTFTDiscriminator,
    STFTDiscriminator,
)

__all__ = [
    "FAMILIES",
    "SPECTRAL_NORM_ITERATIONS",
    "power_iterations_per_call",
    "FAMILY_MODULES",
    "REGISTRY",
    "DiscriminatorFamily",
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
    "power_iterations",
    "spectral_normalize",
]

# Family name -> its multi-discriminator class (``from_options`` builds it from a
# Discriminators' fields; ``module_name`` is its submodule and checkpoint section), in output order.
REGISTRY: dict[str, type[DiscriminatorFamily]] = {
    cls.family: cls
    for cls in (
        period_discriminator.MultiPeriodDiscriminator,
        scale_discriminator.MultiScaleDiscriminator,
        stft_discriminator.MultiScaleSTFTDiscriminator,
    )
}
FAMILIES = tuple(REGISTRY)
FAMILY_MODULES = {name: cls.module_name for name, cls in REGISTRY.items()}  # submodule names


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
    # Compute dtype of every sub-discriminator; the logits and feature maps come back float32.
    dtype: jnp.dtype = jnp.float32
    # When a train step runs MSD's spectral-norm power iteration (read by the train step, see
    # SPECTRAL_NORM_ITERATIONS): "per_call" as torch, "per_step" (ours) once per step.
    spectral_norm_iterations: str = "per_step"

    def setup(self):
        for fam in family_modules(self).values():
            setattr(self, fam.module_name, fam)

    def __call__(
        self, wav: jax.Array, *, update_stats: bool = False
    ) -> dict[str, list[tuple[jax.Array, list[jax.Array]]]]:
        if wav.ndim != 2:
            raise ValueError(f"expected wav [B, T], got shape {wav.shape}")
        wav = wav.astype(self.dtype)
        out = {
            name: getattr(self, REGISTRY[name].module_name)(wav, update_stats=update_stats)
            for name in self.families
        }
        return jax.tree.map(lambda a: a.astype(jnp.float32), out)


# Deviation, "per_step": one power iteration per train step, on the D phase's one call of the
# batched real and generated audio; the G phase reuses those vectors (three fewer iterations).
SPECTRAL_NORM_ITERATIONS = {
    "per_call": "one before every call, as torch's spectral_norm in training mode: D(real) and "
    "D(generated) are separate calls, in the D phase and again in the G phase (4 per step)",
    "per_step": "one per train step, in the D phase's call on real and generated audio "
    "batched together; the G phase uses those vectors",
}


def power_iterations_per_call(discs: Discriminators) -> bool:
    """Whether a train step runs ``discs``' power iterations torch's way (``"per_call"``)."""
    mode = discs.spectral_norm_iterations
    if mode not in SPECTRAL_NORM_ITERATIONS:
        raise ValueError(
            f"disc.spectral_norm_iterations={mode!r}: use one of {sorted(SPECTRAL_NORM_ITERATIONS)}"
        )
    return mode == "per_call"


def family_modules(discs: Discriminators) -> dict[str, DiscriminatorFamily]:
    """``{family: unbound multi-discriminator}`` of ``discs``, in its ``families`` order."""
    unknown = [f for f in discs.families if f not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown discriminator families {sorted(unknown)}; use {FAMILIES}")
    return {name: REGISTRY[name].from_options(discs) for name in discs.families}


def sub_discriminators(discs: Discriminators) -> list[SubDiscriminator]:
    """The sub-discriminators of ``discs`` in its output order (families, then index)."""
    return [
        dataclasses.replace(u, dtype=discs.dtype)
        for fam in family_modules(discs).values()
        for u in fam.units()
    ]
