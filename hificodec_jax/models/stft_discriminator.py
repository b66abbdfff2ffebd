"""Encodec's multi-scale STFT discriminator (MS-STFT D), as used by HiFi-Codec's training.

Reference: AcademiCodec ``encodec/msstftd.MultiScaleSTFTDiscriminator(filters=32)`` (spec 5.3).
Each scale takes a complex STFT (periodic Hann, ``win = n_fft``, ``hop = n_fft / 4``,
``center=False``, divided by ``sqrt(sum(w^2))`` like torchaudio's ``normalized=True``), stacks
real and imaginary parts as 2 channels and runs six 2-D convs over (time, freq).

Layout is channels-last: the spectrogram is ``[B, T', F, 2]`` (torch: ``(B, 2, T', F)``), feature
maps ``[B, T', F_i, 32]`` and logits ``[B, T', F', 1]`` (torch ``(B, 1, T', F')``). 2-D kernels
are ``[K_t, K_f, C_in, C_out]`` (``HWIO``); weight-norm ``weight_g`` is ``[1, 1, 1, C_out]``
(torch's ``(C_out, 1, 1, 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hificodec_jax.audio.spectral import hann_window, stft
from hificodec_jax.models import lane_dense
from hificodec_jax.models.discriminator_units import DiscriminatorFamily, SubDiscriminator
from hificodec_jax.models.layers import _torch_uniform, _WeightNormed
from hificodec_jax.models.strided_conv import space_to_depth_conv

STFT_LRELU_SLOPE = 0.2  # Encodec's LeakyReLU(0.2), unlike HiFi-GAN's 0.1.
STFT_N_FFTS = (1024, 2048, 512, 256, 128)  # reference order; hop = n_fft // 4, win = n_fft


def stft_features(wav: jax.Array, n_fft: int, hop: int, fold: int = 1) -> jax.Array:
    """Real/imag STFT channels of ``wav [B, T]`` -> ``[B, 1 + (T - n_fft) // hop, n_fft//2+1, 2]``.

    ``torchaudio.transforms.Spectrogram(n_fft, hop, n_fft, hann_window, normalized=True,
    center=False, power=None)`` followed by ``cat([real, imag], dim=1)`` and the reference's
    ``b c w t -> b c t w`` rearrange, in channels-last layout. ``fold > 1``: the same values
    folded along frequency (:func:`~hificodec_jax.models.lane_dense.fold`), built from the
    spectrum so that the 2-channel array is never laid out on its own.
    """
    # In float32 whatever the network's compute dtype (bf16 has no FFT, and too few bits).
    window = hann_window(n_fft, periodic=True, dtype=jnp.float32)
    spec = stft(wav.astype(jnp.float32), n_fft, hop, window=window, center=False)  # [B, T', F]
    w64 = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # the same window, in numpy
    spec = spec / math.sqrt(float(np.sum(np.square(w64))))
    if fold == 1:
        return jnp.stack([spec.real, spec.imag], axis=-1).astype(wav.dtype)
    b, frames, freq = spec.shape
    blocks = -(-freq // fold)
    spec = jnp.pad(spec, ((0, 0), (0, 0), (0, blocks * fold - freq)))
    parts = [p.reshape(b, frames, blocks, fold) for p in (spec.real, spec.imag)]
    return jnp.stack(parts, axis=-1).reshape(b, frames, blocks, 2 * fold).astype(wav.dtype)


class Conv2d(_WeightNormed):
    """2-D conv over ``[B, H, W, C_in] -> [B, H', W', features]`` with optional weight norm.

    ``padding=None`` is Encodec's ``get_2d_padding``: ``((k - 1) * d // 2)`` per spatial axis,
    symmetric. torch's default init; ``g`` per output channel as in ``weight_norm(Conv2d)``.
    """

    features: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] | None = None
    weight_norm: bool = True

    @nn.compact
    def kernel_and_bias(self, c_in: int) -> tuple[jax.Array, jax.Array]:
        """The (weight-normed) kernel ``[kh, kw, c_in, features]`` and the bias."""
        kh, kw = self.kernel_size
        fan_in = c_in * kh * kw
        kernel = self.kernel_param((kh, kw, c_in, self.features), fan_in, norm_axes=(0, 1, 2))
        bias = self.param("bias", _torch_uniform(1.0 / math.sqrt(fan_in)), (self.features,))
        return kernel, bias

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.padding is not None:
            return tuple(tuple(p) for p in self.padding)
        return tuple(
            ((k - 1) * d // 2,) * 2 for k, d in zip(self.kernel_size, self.dilation, strict=True)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply_to(x, *self.kernel_and_bias(x.shape[-1]))

    def apply_to(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        """The layer with the given weights (no variables touched)."""
        # Strided along frequency: a stride-1 conv over a space-to-depth input (exact, and its
        # backward pass is faster on XLA CPU; see models/strided_conv.py).
        y = space_to_depth_conv(
            x,
            kernel.astype(x.dtype),
            tuple(self.stride),
            self.pads,
            rhs_dilation=tuple(self.dilation),
        )
        return y + bias.astype(x.dtype)

    def apply_folded(self, x, kernel, bias, length: int, f: int) -> tuple[jax.Array, int]:
        """The layer on ``x`` folded by ``f`` along frequency (true length ``length``): the
        output folded the same way, past its true length zero, and that length."""
        return lane_dense.folded_layer(
            x, kernel, bias, axis=2, length=length, f=f, strides=tuple(self.stride),
            padding=self.pads, dilation=tuple(self.dilation),
        )  # fmt: skip


class STFTDiscriminator(nn.Module):
    """One MS-STFT scale (Encodec ``DiscriminatorSTFT``): ``wav [B, T] -> (logits, fmaps)``.

    ``logits [B, T', F', 1]``; ``fmaps``: the 5 post-LeakyReLU activations ``[B, T', F_i, C]``
    (conv_post's output is *not* a feature map here, unlike MPD/MSD). Submodules ``convs_0..4``
    and ``conv_post`` mirror torch's ``convs.N.conv`` / ``conv_post.conv``; ``convs_0`` has no
    weight norm (AcademiCodec passes no ``norm`` to it), the rest do.
    """

    n_fft: int = 1024
    hop_length: int | None = None  # None: n_fft // 4
    filters: int = 32
    kernel_size: tuple[int, int] = (3, 9)  # (time, freq)
    dilations: Sequence[int] = (1, 2, 4)  # time dilation of convs_1..3
    stride: tuple[int, int] = (1, 2)  # (time, freq) stride of convs_1..3
    # "auto": frequency folded into channels on TPU (models/lane_dense.py), direct elsewhere;
    # "direct" / "folded" force one form (the tests compare them on CPU).
    layout: str = "auto"

    @property
    def num_fmaps(self) -> int:
        return len(self.dilations) + 2

    def setup(self):
        k_t, _ = self.kernel_size
        f = self.filters
        convs = [Conv2d(f, self.kernel_size, weight_norm=False)]
        for d in self.dilations:
            convs.append(Conv2d(f, self.kernel_size, stride=self.stride, dilation=(d, 1)))
        convs.append(Conv2d(f, (k_t, k_t)))
        self.convs = convs
        self.conv_post = Conv2d(1, (k_t, k_t))

    def __call__(self, wav: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        hop = self.hop_length or self.n_fft // 4
        layers = [*self.convs, self.conv_post]
        channels = [2] + [self.filters] * len(self.convs)  # real and imaginary parts first
        weights = [layer.kernel_and_bias(c) for layer, c in zip(layers, channels, strict=True)]

        def direct(wav, weights):
            z = stft_features(wav, self.n_fft, hop)  # [B, T', n_fft//2+1, 2]
            fmaps = []
            for layer, (kernel, bias) in zip(layers[:-1], weights[:-1], strict=True):
                z = nn.leaky_relu(layer.apply_to(z, kernel, bias), STFT_LRELU_SLOPE)
                fmaps.append(z)  # freq halves in convs_1..3
            return layers[-1].apply_to(z, *weights[-1]), fmaps

        def folded(wav, weights):
            # TPU: frequency folded into the 32 filters' lanes (models/lane_dense.py); the
            # feature maps and logits come back unfolded.
            f = lane_dense.fold_factor(self.filters)
            length = self.n_fft // 2 + 1
            z = stft_features(wav, self.n_fft, hop, fold=f)
            fmaps = []
            for layer, (kernel, bias) in zip(layers[:-1], weights[:-1], strict=True):
                z, length = layer.apply_folded(z, kernel, bias, length, f)
                z = nn.leaky_relu(z, STFT_LRELU_SLOPE)
                fmaps.append(lane_dense.unfold(z, 2, f, length))
            logits, length = layers[-1].apply_folded(z, *weights[-1], length, f)
            return lane_dense.unfold(logits, 2, f, length), fmaps

        if self.layout == "direct":
            return direct(wav, weights)
        if self.layout == "folded":
            return folded(wav, weights)
        return jax.lax.platform_dependent(wav, weights, tpu=folded, default=direct)


class MultiScaleSTFTDiscriminator(DiscriminatorFamily):
    """Encodec's MS-STFT D: one :class:`STFTDiscriminator` per ``n_fft`` (hop ``n_fft // 4``).

    ``wav [B, T]`` (``T >= max(n_ffts)``) -> list over scales of ``(logits, fmaps)``.
    Submodules ``discriminators_i`` mirror torch's ``discriminators.i``.
    """

    family: ClassVar[str] = "stft"  # registry key
    module_name: ClassVar[str] = "mstftd"  # submodule / checkpoint section name
    n_ffts: Sequence[int] = STFT_N_FFTS
    filters: int = 32

    @classmethod
    def from_options(cls, options) -> MultiScaleSTFTDiscriminator:
        """The MS-STFT D of a ``Discriminators`` (reads ``stft_n_ffts`` and ``stft_filters``)."""
        return cls(options.stft_n_ffts, options.stft_filters, parent=None)

    def units(self) -> list[SubDiscriminator]:
        return [
            SubDiscriminator(
                self.family,
                self.module_name,
                i,
                STFTDiscriminator(n_fft=n, hop_length=n // 4, filters=self.filters, parent=None),
            )
            for i, n in enumerate(self.n_ffts)
        ]
