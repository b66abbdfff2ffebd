"""HiFi-GAN's multi-period discriminator (MPD), as used by HiFi-Codec's training.

Reference: AcademiCodec ``hificodec/models.py`` (``DiscriminatorP``, ``MultiPeriodDiscriminator``;
spec section 5.1). Layout is channels-last.

Exact rewrite for speed on XLA CPU (spec performance.md, "full GAN training step"): the period
is folded into the batch, ``[B, T] -> [B*p, T/p, 1]``, and the convs are 1-D. The reference's
``(k, 1)`` 2-D kernels never mix the ``p`` columns, so this is the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from hificodec_jax.models.discriminator_units import DiscriminatorFamily, SubDiscriminator
from hificodec_jax.models.layers import LRELU_SLOPE, Conv1d, get_padding

__all__ = ["MPD_CHANNELS", "MultiPeriodDiscriminator", "PeriodDiscriminator"]

MPD_CHANNELS = (32, 128, 512, 1024, 1024)  # DiscriminatorP's conv widths


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN ``DiscriminatorP``: ``wav [B, T] -> (logits [B, T5*p], fmaps)``.

    ``T`` is reflect-padded to ``L = ceil(T/p)*p`` and folded to ``[B*p, L/p, 1]``; five WN
    convs (channels 32, 128, 512, 1024 with ``stride``, then 1024 with stride 1; kernel
    ``kernel_size``, pad ``get_padding(kernel_size)``), each followed by LeakyReLU(0.1), then
    ``conv_post`` (1024 -> 1, kernel 3). ``fmaps``: the 6 maps as ``[B, T_i, p, C_i]`` (torch's
    ``(B, C_i, T_i, p)`` channels-last); ``logits``: conv_post's map flattened over
    ``(T_5, p)`` like ``torch.flatten(x, 1, -1)``. Submodules ``convs_i``/``conv_post`` mirror
    torch's keys; their ``weight_v [k, C_in, C_out]`` is torch's ``(C_out, C_in, k, 1)``.
    """

    period: int
    kernel_size: int = 5
    stride: int = 3
    channels: Sequence[int] = MPD_CHANNELS  # the last one runs at stride 1

    @property
    def num_fmaps(self) -> int:
        return len(self.channels) + 1

    def setup(self):
        k, pad = self.kernel_size, get_padding(self.kernel_size)
        n = len(self.channels)
        self.convs = [
            Conv1d(c, k, stride=self.stride if i < n - 1 else 1, padding=(pad, pad))
            for i, c in enumerate(self.channels)
        ]
        self.conv_post = Conv1d(1, 3, padding=(1, 1))

    def __call__(self, wav: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        b, t = wav.shape
        p = self.period
        if t % p:
            wav = jnp.pad(wav, ((0, 0), (0, p - t % p)), mode="reflect")
        x = wav.reshape(b, -1, p).transpose(0, 2, 1).reshape(b * p, -1, 1)  # [B*p, L/p, 1]

        def unfold(h):  # [B*p, T_i, C] -> [B, T_i, p, C]
            return h.reshape(b, p, h.shape[1], h.shape[2]).transpose(0, 2, 1, 3)

        fmaps = []
        for conv in self.convs:
            x = nn.leaky_relu(conv(x), LRELU_SLOPE)
            fmaps.append(unfold(x))
        x = unfold(self.conv_post(x))  # [B, T5, p, 1]
        fmaps.append(x)
        return x.reshape(b, -1), fmaps


class MultiPeriodDiscriminator(DiscriminatorFamily):
    """HiFi-GAN MPD: one :class:`PeriodDiscriminator` per period.

    ``wav [B, T] -> [(logits, fmaps)]`` in ``periods`` order (``discriminators_i``).
    """

    family: ClassVar[str] = "mpd"  # registry key
    module_name: ClassVar[str] = "mpd"  # submodule / checkpoint section name
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    channels: Sequence[int] = MPD_CHANNELS

    @classmethod
    def from_options(cls, options) -> MultiPeriodDiscriminator:
        """The MPD of a ``Discriminators`` (reads its ``periods`` and ``mpd_channels``)."""
        return cls(options.periods, options.mpd_channels, parent=None)

    def units(self) -> list[SubDiscriminator]:
        return [
            SubDiscriminator(
                self.family,
                self.module_name,
                i,
                PeriodDiscriminator(p, channels=self.channels, parent=None),
            )
            for i, p in enumerate(self.periods)
        ]
