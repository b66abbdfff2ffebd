"""The HiFi-Codec paper's text architecture (SEANet-style), the ``"seanet"`` model family.

Source: the HiFi-Codec paper (Yang et al., arXiv 2305.02765, "model architecture"), which
describes an Encodec/SoundStream-like network rather than the released HiFi-GAN code:

* encoder: a kernel-7 conv to ``C`` channels, then ``B`` blocks, each a residual unit (two
  kernel-3 convs and a skip connection) followed by a strided conv of kernel ``2S`` that doubles
  the channels, then a 2-layer LSTM and a final kernel-7 conv to ``D`` channels;
* decoder: the mirror image, with transposed convs (kernel ``2S``, stride ``S``) halving the
  channels, ending in a kernel-7 conv to one channel.
  Paper settings: ``C = 32``, ``B = 4``, strides (2, 4, 5, 8) / (2, 4, 5, 6) / (2, 2, 2, 4).

Choices the paper text leaves open (ours, following SEANet / Encodec where they decide):

* activation: ELU (alpha 1) before every conv except the first, as SEANet; ``activation=
  "leaky_relu"`` swaps in HiFi-GAN's leaky ReLU (slope 0.1) instead;
* norm: weight norm on every conv and transposed conv (Encodec's default), none on the LSTM;
* residual unit: ``x + conv(act(conv(act(x))))``, both convs ``residual_kernel_size`` wide at full
  width, dilation 1 (SEANet's halves the hidden width and uses kernel 1 second), identity skip;
* LSTM: unidirectional ``nn.OptimizedLSTMCell`` layers with one skip around the stack,
  ``x + lstm(x)`` (Encodec's SLSTM); ``lengths`` become ``seq_lengths``;
* decoder output: ``tanh`` (as the released HiFi-Codec decoder; Encodec's is linear),
  ``tanh_output=False`` gives the linear one.

Lengths (ours, as the HiFi-GAN family): with ``lengths`` / ``frame_lengths``, activations past
each clip's end are zeroed before every conv (what zero padding does to the lone clip), and the
LSTMs get them as ``seq_lengths``; so a padded clip's latent and reconstruction equal the
unpadded clip's on all its ``floor(length / hop)`` frames.

Strided convs use :func:`strided_conv_padding` so ``T -> floor(T / S)`` exactly; transposed convs
give exactly ``F * S``. Encoder: ``[B, T, 1] -> [B, floor(T / hop), latent_dim]``; decoder:
``[B, F, D] -> [B, F * hop]`` with ``hop = prod(strides)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hificodec_jax.models.layers import (
    LRELU_SLOPE,
    Conv1d,
    ConvTranspose1d,
    apply_mask,
    frame_mask,
    strided_conv_padding,
)


def _activate(x: jax.Array, activation: str) -> jax.Array:
    if activation == "elu":
        return nn.elu(x)
    if activation == "leaky_relu":
        return nn.leaky_relu(x, LRELU_SLOPE)
    raise ValueError(f"unknown activation {activation!r}; one of ['elu', 'leaky_relu']")


class ResidualUnit(nn.Module):
    """``x + conv_2(act(conv_1(act(x))))``: ``[B, T, C] -> [B, T, C]``; ``mask [B, T]`` zeroes
    padded frames before each conv."""

    channels: int
    kernel_size: int = 3
    activation: str = "elu"
    weight_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        c, k, wn, act = self.channels, self.kernel_size, self.weight_norm, self.activation
        h = Conv1d(c, k, weight_norm=wn, name="conv_1")(apply_mask(_activate(x, act), mask))
        h = Conv1d(c, k, weight_norm=wn, name="conv_2")(apply_mask(_activate(h, act), mask))
        return x + h


class SkipLSTM(nn.Module):
    """``x + LSTM_n(...LSTM_1(x))``: ``[B, F, C] -> [B, F, C]``, unidirectional, ``num_layers`` deep.

    ``seq_lengths [B]`` (frames) are passed on to every ``nn.RNN``. Being unidirectional, the
    outputs on valid frames never see the padding anyway (the lengths would only matter for a
    final carry, which is not returned, or a backward direction). ``num_layers=0``: identity.
    """

    features: int
    num_layers: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, seq_lengths: jax.Array | None = None) -> jax.Array:
        if self.num_layers == 0:
            return x
        h = x
        for i in range(self.num_layers):
            cell = nn.OptimizedLSTMCell(self.features, name=f"layer_{i}")
            h = nn.RNN(cell)(h, seq_lengths=seq_lengths)
        return x + h


class SeanetEncoder(nn.Module):
    """``wav [B, T, 1] -> z [B, floor(T / prod(strides)), latent_dim]``.

    Block ``i`` works at ``channels * 2**i`` channels and leaves ``channels * 2**(i+1)``; the LSTM
    and the output conv see ``channels * 2**B``. ``lengths [B]`` (samples): padded samples /
    frames are zeroed before every conv and ``lengths // hop`` are the LSTM's ``seq_lengths``.
    """

    strides: Sequence[int] = (2, 4, 5, 8)
    channels: int = 32
    lstm_layers: int = 2
    latent_dim: int = 512
    residual_kernel_size: int = 3
    activation: str = "elu"
    weight_norm: bool = True

    def receptive_field(self) -> None:
        """None: the LSTM's reach is unbounded (see :meth:`HifiEncoder.receptive_field`)."""
        return None

    @nn.compact
    def __call__(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        wn, act = self.weight_norm, self.activation
        mask = frame_mask(lengths, wav.shape[1])
        x = Conv1d(self.channels, 7, weight_norm=wn, name="conv_pre")(apply_mask(wav, mask))
        hop = 1  # x: [B, T, C]
        for i, s in enumerate(self.strides):
            ch = self.channels * 2**i
            x = ResidualUnit(ch, self.residual_kernel_size, act, wn, name=f"res_{i}")(x, mask)
            x = Conv1d(
                2 * ch,
                2 * s,
                stride=s,
                padding=strided_conv_padding(2 * s, s),
                weight_norm=wn,
                name=f"down_{i}",
            )(apply_mask(_activate(x, act), mask))  # [B, T / (s_0 ... s_i), 2 ch]
            hop *= s
            mask = frame_mask(None if lengths is None else lengths // hop, x.shape[1])
        frames = None if lengths is None else lengths // hop
        x = SkipLSTM(x.shape[-1], self.lstm_layers, name="lstm")(x, frames)  # [B, F, C * 2**B]
        x = apply_mask(_activate(x, act), mask)
        return Conv1d(self.latent_dim, 7, weight_norm=wn, name="conv_post")(x)  # [B, F, D]


class SeanetDecoder(nn.Module):
    """``z_q [B, F, D] -> wav_hat [B, F * prod(strides)]``; in (-1, 1) if ``tanh_output``.

    ``strides`` are in decoder order (the encoder's reversed). A kernel-7 conv lifts ``D`` to
    ``channels * 2**B``; block ``i`` upsamples by ``strides[i]`` to ``channels * 2**(B-1-i)``
    channels and applies a residual unit, so the last block has ``channels``. ``frame_lengths
    [B]``: padded frames / samples are zeroed before every conv; they are the LSTM's
    ``seq_lengths``.
    """

    strides: Sequence[int] = (8, 5, 4, 2)
    channels: int = 32
    lstm_layers: int = 2
    residual_kernel_size: int = 3
    activation: str = "elu"
    tanh_output: bool = True
    weight_norm: bool = True

    def receptive_field(self) -> None:
        """None: the LSTM's reach is unbounded (see :meth:`HifiDecoder.receptive_field`)."""
        return None

    @nn.compact
    def __call__(self, z_q: jax.Array, frame_lengths: jax.Array | None = None) -> jax.Array:
        wn, act, n = self.weight_norm, self.activation, len(self.strides)
        ch = self.channels * 2**n
        mask = frame_mask(frame_lengths, z_q.shape[1])
        x = Conv1d(ch, 7, weight_norm=wn, name="conv_pre")(apply_mask(z_q, mask))  # [B, F, 2**B C]
        x = SkipLSTM(ch, self.lstm_layers, name="lstm")(x, frame_lengths)
        hop = 1
        for i, s in enumerate(self.strides):
            ch //= 2
            x = apply_mask(_activate(x, act), mask)
            x = ConvTranspose1d(ch, 2 * s, s, weight_norm=wn, name=f"up_{i}")(x)
            hop *= s
            mask = frame_mask(None if frame_lengths is None else frame_lengths * hop, x.shape[1])
            x = ResidualUnit(ch, self.residual_kernel_size, act, wn, name=f"res_{i}")(x, mask)
            # x: [B, F * s_0 ... s_i, C * 2**(B-1-i)]
        x = Conv1d(1, 7, weight_norm=wn, name="conv_post")(apply_mask(_activate(x, act), mask))
        x = x[..., 0]  # [B, T]
        return jnp.tanh(x) if self.tanh_output else x
