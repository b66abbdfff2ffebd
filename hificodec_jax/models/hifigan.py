"""The released HiFi-Codec encoder and decoder (AcademiCodec ``models.Encoder`` / ``Generator``).

Encoder: ``wav [B, T, 1] -> z [B, F, D]`` with ``F = floor(T / hop)``; a mirror of the HiFi-GAN
generator with strided weight-normed convs, ResBlock1 stacks normalised by GroupNorm on their
running sum, a leaky ReLU of slope 0.01 and a plain (not weight-normed) ``conv_post``.
Decoder: ``z_q [B, F, D] -> wav_hat [B, F * hop]``; HiFi-GAN V1 with transposed-conv upsampling,
averaged ResBlocks ("MRF") and a tanh output.

Submodule names mirror the torch state-dict keys (``ups.0`` -> ``ups_0``, ``resblocks.3.convs1.2``
-> ``resblocks_3/convs1_2``) so that :mod:`hificodec_jax.reference.convert` is a mechanical mapping.
Deviation from the reference: the latent size ``latent_dim`` and the channel widths are
hyper-parameters (the reference hard-codes 512 and needs exactly 4 stages to reach it).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hificodec_jax.models import lane_dense
from hificodec_jax.models.layers import (
    LRELU_SLOPE,
    Conv1d,
    ConvTranspose1d,
    MaskedGroupNorm,
    ResBlock1,
    apply_mask,
    frame_mask,
    polyphase_taps,
    resblock_reach,
    strided_conv_padding,
)

ENCODER_FINAL_SLOPE = 0.01  # reference: F.leaky_relu(x) with torch's default slope, not 0.1


def resblocks(blocks, x: jax.Array, mask, layout: str, *, average: bool = False):
    """Parallel :class:`ResBlock1` s on the same ``x [B, T, C]``: their outputs (a list), or
    with ``average`` their mean ("MRF"). On TPU (``layout="auto"``) a stage narrower than the
    lanes (64 or 32 channels) runs them with time folded into channels, exactly
    (:mod:`~hificodec_jax.models.lane_dense`); ``"direct"`` / ``"folded"`` force one form
    (the encoder uses ``"direct"``)."""
    b, t, c = x.shape
    weights = [block.weights(c) for block in blocks]

    def direct(x, mask, weights):
        hs = [block.apply_with(x, w, mask) for block, w in zip(blocks, weights, strict=True)]
        return sum(hs[1:], hs[0]) / len(hs) if average else hs

    def folded(x, mask, weights):
        xf = lane_dense.fold(x, 1, f)
        mf = None if mask is None else jnp.repeat(mask.reshape(b, t // f, f), c, axis=-1)
        hs = [block.apply_folded(xf, w, mf, f) for block, w in zip(blocks, weights, strict=True)]
        if average:  # one unfold of the mean
            return lane_dense.unfold(sum(hs[1:], hs[0]) / len(hs), 1, f, t)
        return [lane_dense.unfold(h, 1, f, t) for h in hs]

    f = lane_dense.fold_factor(c)
    if layout == "direct" or f == 1 or t % f:
        return direct(x, mask, weights)
    if layout == "folded":
        return folded(x, mask, weights)
    return jax.lax.platform_dependent(x, mask, weights, tpu=folded, default=direct)


class HifiEncoder(nn.Module):
    """``wav [B, T, 1] -> z [B, floor(T / prod(strides)), latent_dim]``.

    ``strides``/``kernel_sizes`` are in encoder order (the reference reverses the generator's
    ``upsample_rates``: (2, 4, 5, 8) for hop 320). Stage ``i`` has ``base_channels * 2**(i+1)``
    channels; GroupNorm uses ``channels // group_size`` groups (16 channels each, eps 1e-6).
    ``lengths`` (samples, ``[B]``) keep padded frames out of the GroupNorm statistics.
    """

    strides: Sequence[int] = (2, 4, 5, 8)
    kernel_sizes: Sequence[int] = (4, 8, 11, 16)
    resblock_kernel_sizes: Sequence[int] = (11, 7, 3)
    resblock_dilations: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    base_channels: int = 32
    latent_dim: int = 512
    group_size: int = 16
    weight_norm: bool = True

    def setup(self):
        wn = self.weight_norm
        n_k = len(self.resblock_kernel_sizes)
        self.conv_pre = Conv1d(self.base_channels, 7, weight_norm=wn)
        ups, resblocks, norms = [], [], []
        for i, (s, k) in enumerate(zip(self.strides, self.kernel_sizes, strict=True)):
            ch = self.base_channels * 2 ** (i + 1)
            ups.append(Conv1d(ch, k, stride=s, padding=strided_conv_padding(k, s), weight_norm=wn))
            for k_rb, d in zip(self.resblock_kernel_sizes, self.resblock_dilations, strict=True):
                resblocks.append(ResBlock1(ch, k_rb, tuple(d), weight_norm=wn))
                norms.append(MaskedGroupNorm(max(ch // self.group_size, 1), epsilon=1e-6))
        self.ups, self.resblocks, self.normalize, self.num_kernels = ups, resblocks, norms, n_k
        # Reference: plain Conv1d initialised N(0, 0.01) (the only layer init_weights reaches).
        self.conv_post = Conv1d(self.latent_dim, 3, weight_norm=False, kernel_init_std=0.01)

    def receptive_field(self) -> int:
        """One-sided reach in input samples: how far from a sample its latent can change
        (convolutions only; the GroupNorm statistics span the whole input)."""
        reach, rate = 3, 1  # conv_pre (k=7), in input samples
        for s, k in zip(self.strides, self.kernel_sizes, strict=True):
            left = strided_conv_padding(k, s)[0]
            reach += rate * (max(left, k - 1 - left) + s)
            rate *= s
            reach += rate * resblock_reach(self.resblock_kernel_sizes, self.resblock_dilations)
        return reach + rate  # conv_post (k=3) at the frame rate

    def __call__(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        # With lengths, activations past each clip's end are zeroed before every conv (like
        # torch's zero padding of the lone clip) and left out of GroupNorm statistics, so a
        # padded clip's latent equals the unpadded clip's on its floor(length / hop) frames.
        mask = frame_mask(lengths, wav.shape[1])
        x = self.conv_pre(apply_mask(wav, mask))  # [B, T, C0]
        hop = 1
        for i, up in enumerate(self.ups):
            x = up(apply_mask(nn.leaky_relu(x, LRELU_SLOPE), mask))  # [B, T / (s_0..s_i), C_i]
            hop *= self.strides[i]
            mask = frame_mask(None if lengths is None else lengths // hop, x.shape[1])
            n0 = i * self.num_kernels
            # Direct on every platform: folded on TPU, the GroupNorm between the ResBlocks
            # reads each output back in the narrow layout, which cost more than the fold saved
            # (docs/performance-notes.md).
            hs = resblocks(self.resblocks[n0 : n0 + self.num_kernels], x, mask, "direct")
            xs = None
            for j, h in enumerate(hs):
                xs = self.normalize[n0 + j](h if xs is None else xs + h, mask)
            x = xs / self.num_kernels
        x = nn.leaky_relu(x, ENCODER_FINAL_SLOPE)
        return self.conv_post(apply_mask(x, mask))  # [B, F, D]


class HifiDecoder(nn.Module):
    """``z_q [B, F, D] -> wav_hat [B, F * prod(upsample_rates)]`` in (-1, 1).

    Stage ``i`` upsamples by ``upsample_rates[i]`` to ``upsample_initial_channel // 2**(i+1)``
    channels and averages one ResBlock1 per kernel size applied to the same input.
    """

    upsample_rates: Sequence[int] = (8, 5, 4, 2)
    upsample_kernel_sizes: Sequence[int] = (16, 11, 8, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: Sequence[int] = (3, 7, 11)
    resblock_dilations: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    weight_norm: bool = True
    # "auto": narrow stages folded on TPU (see resblocks), direct elsewhere; "direct" / "folded"
    # force one form (the tests compare them on CPU).
    layout: str = "auto"

    def setup(self):
        wn = self.weight_norm
        self.conv_pre = Conv1d(self.upsample_initial_channel, 7, weight_norm=wn)
        ups, resblocks = [], []
        for i, (u, k) in enumerate(
            zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True)
        ):
            ch = self.upsample_initial_channel // 2 ** (i + 1)
            ups.append(ConvTranspose1d(ch, k, u, weight_norm=wn))
            for k_rb, d in zip(self.resblock_kernel_sizes, self.resblock_dilations, strict=True):
                resblocks.append(ResBlock1(ch, k_rb, tuple(d), weight_norm=wn))
        self.ups, self.resblocks = ups, resblocks
        self.num_kernels = len(self.resblock_kernel_sizes)
        self.conv_post = Conv1d(1, 7, weight_norm=wn)

    def receptive_field(self) -> float:
        """One-sided reach in input frames: how far from a frame its output samples can change."""
        reach, rate = 3.0, 1  # conv_pre (k=7), in frames
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            _, j_min, j_max = polyphase_taps(k, u)
            reach += max(-j_min, j_max) / rate
            rate *= u
            reach += resblock_reach(self.resblock_kernel_sizes, self.resblock_dilations) / rate
        return reach + 3 / rate  # conv_post (k=7) at the sample rate

    def __call__(self, z_q: jax.Array, frame_lengths: jax.Array | None = None) -> jax.Array:
        # With frame_lengths, padded frames are zeroed before every conv, so each clip decodes
        # as it would alone (torch zero-pads the lone clip).
        mask = frame_mask(frame_lengths, z_q.shape[1])
        x = self.conv_pre(apply_mask(z_q, mask))  # [B, F, C]
        hop = 1
        for i, up in enumerate(self.ups):
            x = up(apply_mask(nn.leaky_relu(x, LRELU_SLOPE), mask))  # [B, F * u_0..u_i, C_i]
            hop *= self.upsample_rates[i]
            mask = frame_mask(None if frame_lengths is None else frame_lengths * hop, x.shape[1])
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = resblocks(blocks, x, mask, self.layout, average=True)
        x = self.conv_post(apply_mask(nn.leaky_relu(x, LRELU_SLOPE), mask))  # [B, T, 1]
        return jnp.tanh(x[..., 0])
