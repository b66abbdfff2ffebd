"""HiFi-GAN's multi-scale discriminator (MSD) and its grouped, spectral-normed convs.

Reference: AcademiCodec ``hificodec/models.py`` (``DiscriminatorS``, ``MultiScaleDiscriminator``;
spec section 5.2). Layout is channels-last. Exact rewrites for speed on XLA CPU (spec
performance.md, "full GAN training step"):

* MSD's grouped convs run as one dense conv per group (``split_groups=True``), in a loop over
  the groups with a hand-written VJP (:mod:`hificodec_jax.models.grouped_conv`); XLA CPU's
  ``feature_group_count`` conv is several times slower, and unrolled groups made MSD most of
  the train step's compile. The kernel is stored whole, ``[K, C_in/G, C_out]`` like
  ``feature_group_count`` expects, so both paths (and checkpoint conversion) share one layout.
* MSD's strided convs (and MS-STFT's frequency-strided ones) run as stride-1 convs over a
  space-to-depth input (:mod:`hificodec_jax.models.strided_conv`): XLA CPU computes the input
  gradient of a strided conv from a zero-dilated output gradient, much slower than the forward.

Spectral norm (MSD's first scale) is a power-iteration parametrisation like the old-style
``torch.nn.utils.spectral_norm``: the trainable ``params`` hold ``kernel`` (torch ``weight_orig``)
and ``bias``; the power-iteration vectors live in the non-trainable ``"spectral"`` collection as
``u [C_out]`` and ``v [C_in/G * K]`` (torch ``weight_u`` / ``weight_v``: *not* weight-norm
directions). ``W_sn = W / (u . W v)`` with ``W`` torch's ``(C_out, C_in/G * K)`` matrix. Pass
``update_stats=True`` with ``mutable=["spectral"]`` to run one power iteration first (torch's
training mode); with ``update_stats=False`` the stored vectors are used (torch's eval mode).
torch runs one iteration per sub-discriminator *call*, i.e. separately for ``D(y)`` and
``D(y_hat)`` (and again in the G phase); a caller batching real and fake together gets one
iteration per batched call, unless it runs the halves as separate calls
(``SubDiscriminator.apply(..., calls=2)``) or iterates the stored vectors itself
(:func:`power_iterations`). flax's ``nn.SpectralNorm`` was not used: it stores only
``u`` and runs the power iteration on every call (``update_stats`` only controls storing), so
torch's eval mode (stored ``weight_u``/``weight_v``, no iteration) could not be reproduced.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from hificodec_jax.models import lane_dense
from hificodec_jax.models.discriminator_units import DiscriminatorFamily, SubDiscriminator
from hificodec_jax.models.layers import LRELU_SLOPE, _torch_uniform, _WeightNormed, get_padding
from hificodec_jax.models.strided_conv import space_to_depth_conv

__all__ = [
    "MSD_LAYERS",
    "GroupedConv1d",
    "MultiScaleDiscriminator",
    "ScaleDiscriminator",
    "avg_pool_1d",
    "grouped_conv1d",
    "power_iterations",
    "spectral_normalize",
]

_HI = jax.lax.Precision.HIGHEST


def grouped_conv1d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    groups: int = 1,
    split_groups: bool = True,
) -> jax.Array:
    """Grouped 1-D conv ``[B, T, C_in] x [K, C_in/G, C_out] -> [B, T', C_out]`` (no bias).

    Same result as ``lax.conv_general_dilated(..., feature_group_count=groups)``; with
    ``split_groups`` it is computed as ``groups`` dense convs, looped
    (:mod:`hificodec_jax.models.grouped_conv`).
    A strided conv runs as a stride-1 conv over a space-to-depth input (exact; its backward
    pass is faster on XLA CPU, see :mod:`hificodec_jax.models.strided_conv`). On TPU a grouped
    conv whose input fits one lane row (MSD's first two) runs dense with a block-diagonal
    kernel (exact; :func:`~hificodec_jax.models.lane_dense.block_diagonal_kernel`).
    """

    def default(x, kernel):
        return space_to_depth_conv(
            x, kernel, (stride,), (tuple(padding),), groups=groups, split_groups=split_groups
        )

    if not lane_dense.dense_is_cheaper(x.shape[-1], groups):
        return default(x, kernel)

    def dense(x, kernel):
        return jax.lax.conv_general_dilated(
            x,
            lane_dense.block_diagonal_kernel(kernel, groups),
            (stride,),
            (tuple(padding),),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )

    return jax.lax.platform_dependent(x, kernel, tpu=dense, default=default)


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``torch.nn.functional.normalize``: ``x / max(||x||, eps)``."""
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def spectral_normalize(
    kernel: jax.Array, u: jax.Array, v: jax.Array, *, n_power_iterations: int = 0
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``kernel [K, C_in/G, C_out]`` divided by its spectral norm estimate ``sigma = u . W v``.

    ``W`` is torch's weight matrix ``(C_out, C_in/G * K)`` (``u [C_out]``, ``v [C_in/G * K]``).
    Runs ``n_power_iterations`` steps (``v <- norm(W^T u)``, ``u <- norm(W v)``) on the
    stop-gradient'ed ``W`` first, as torch's ``spectral_norm`` does in training mode; the
    gradient flows through ``W`` in both numerator and ``sigma``, not through ``u``/``v``.
    Returns ``(kernel / sigma, u, v, sigma)``.
    """
    w = jnp.transpose(kernel, (2, 1, 0)).reshape(kernel.shape[-1], -1)
    w_sg = jax.lax.stop_gradient(w)
    for _ in range(n_power_iterations):
        v = _l2_normalize(jnp.matmul(w_sg.T, u, precision=_HI))
        u = _l2_normalize(jnp.matmul(w_sg, v, precision=_HI))
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    sigma = jnp.dot(u, jnp.matmul(w, v, precision=_HI), precision=_HI)
    return kernel / sigma, u, v, sigma


def power_iterations(params, spectral, n: int = 1):
    """``spectral`` (a tree of ``{"u", "v"}`` beside ``params``' ``kernel`` s, e.g. a
    ``Discriminators``' ``"spectral"`` collection) after ``n`` more power iterations on the
    kernels: what ``n`` training-mode calls of each spectral-normed conv would store."""

    def walk(p, s):
        if "u" in s and "v" in s:
            _, u, v, _ = spectral_normalize(p["kernel"], s["u"], s["v"], n_power_iterations=n)
            return {"u": u, "v": v}
        return {k: walk(p[k], s[k]) for k in s}

    return walk(params, spectral) if n else spectral


def avg_pool_1d(x: jax.Array, window: int = 4, stride: int = 2, pad: int = 2) -> jax.Array:
    """``torch.nn.AvgPool1d(window, stride, pad)`` (zero padding counted) over ``x [B, T]``.

    ``[B, T] -> [B, (T + 2*pad - window) // stride + 1]``.
    """
    n = (x.shape[-1] + 2 * pad - window) // stride + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad)))
    taps = [xp[:, j : j + (n - 1) * stride + 1 : stride] for j in range(window)]
    return sum(taps) / window


class GroupedConv1d(_WeightNormed):
    """Grouped 1-D conv with weight norm, spectral norm or none: ``[B, T, C_in] -> [B, T', C]``.

    Params: ``norm="weight"``: ``weight_g [1, 1, C]``, ``weight_v [K, C_in/G, C]``, ``bias``;
    ``"spectral"``: ``kernel [K, C_in/G, C]``, ``bias`` plus ``spectral/{u, v}`` (see module
    docstring); ``"none"``: ``kernel``, ``bias``. Symmetric padding ``get_padding(K)`` unless
    given. torch's default init (fan-in ``C_in/G * K``).
    """

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    padding: int | None = None
    norm: str = "weight"  # "weight" | "spectral" | "none"
    split_groups: bool = True
    n_power_iterations: int = 1  # per update_stats=True call, like torch's default

    @property
    def weight_norm(self) -> bool:  # read by _WeightNormed.kernel_param
        return self.norm == "weight"

    @nn.compact
    def __call__(self, x: jax.Array, *, update_stats: bool = False) -> jax.Array:
        c_in, g = x.shape[-1], self.groups
        if c_in % g or self.features % g:
            raise ValueError(f"channels {c_in}->{self.features} do not split into {g} groups")
        if self.norm not in ("weight", "spectral", "none"):
            raise ValueError(f"unknown norm {self.norm!r}")
        fan_in = c_in // g * self.kernel_size
        shape = (self.kernel_size, c_in // g, self.features)
        kernel = self.kernel_param(shape, fan_in, norm_axes=(0, 1))
        bias = self.param("bias", _torch_uniform(1.0 / math.sqrt(fan_in)), (self.features,))
        if self.norm == "spectral":
            kernel = self._spectral(kernel, update_stats)
        p = get_padding(self.kernel_size) if self.padding is None else self.padding
        y = grouped_conv1d(
            x,
            kernel.astype(x.dtype),
            stride=self.stride,
            padding=(p, p),
            groups=g,
            split_groups=self.split_groups,
        )
        return y + bias.astype(x.dtype)

    def _spectral(self, kernel: jax.Array, update_stats: bool) -> jax.Array:
        rng = lambda: self.make_rng("params")  # noqa: E731
        n_u, n_v = kernel.shape[2], kernel.shape[0] * kernel.shape[1]
        u = self.variable("spectral", "u", lambda: _l2_normalize(jax.random.normal(rng(), (n_u,))))
        v = self.variable("spectral", "v", lambda: _l2_normalize(jax.random.normal(rng(), (n_v,))))
        update = update_stats and not self.is_initializing()  # torch: no iteration at creation
        n_iter = self.n_power_iterations if update else 0
        kernel, u_new, v_new, _ = spectral_normalize(
            kernel, u.value, v.value, n_power_iterations=n_iter
        )
        if update:
            u.value, v.value = u_new, v_new
        return kernel


# (C_out, kernel, stride, groups) of DiscriminatorS's convs; all padded get_padding(kernel).
MSD_LAYERS = (
    (128, 15, 1, 1),
    (128, 41, 2, 4),
    (256, 41, 2, 16),
    (512, 41, 4, 16),
    (1024, 41, 4, 16),
    (1024, 41, 1, 16),
    (1024, 5, 1, 1),
)


class ScaleDiscriminator(nn.Module):
    """HiFi-GAN ``DiscriminatorS``: ``wav [B, T] -> (logits [B, T7], fmaps)``.

    Seven convs (``layers``, default :data:`MSD_LAYERS`; narrower ones only for tests and tiny
    configs) each followed by LeakyReLU(0.1), then ``conv_post`` (-> 1 channel, kernel 3);
    ``fmaps``: the 8 maps ``[B, T_i, C_i]`` (conv_post's included);
    ``logits``: conv_post's map flattened. Weight norm, or spectral norm with
    ``use_spectral_norm`` (then pass ``update_stats``, see the module docstring).
    """

    use_spectral_norm: bool = False
    split_groups: bool = True
    layers: Sequence[tuple[int, int, int, int]] = MSD_LAYERS  # (C_out, kernel, stride, groups)

    @property
    def num_fmaps(self) -> int:
        return len(self.layers) + 1

    def setup(self):
        norm = "spectral" if self.use_spectral_norm else "weight"
        self.convs = [
            GroupedConv1d(c, k, s, groups=g, norm=norm, split_groups=self.split_groups)
            for c, k, s, g in self.layers
        ]
        self.conv_post = GroupedConv1d(1, 3, norm=norm)

    def __call__(
        self, wav: jax.Array, *, update_stats: bool = False
    ) -> tuple[jax.Array, list[jax.Array]]:
        x = wav[..., None]  # [B, T, 1]
        fmaps = []
        for conv in self.convs:
            x = nn.leaky_relu(conv(x, update_stats=update_stats), LRELU_SLOPE)
            fmaps.append(x)
        x = self.conv_post(x, update_stats=update_stats)  # [B, T7, 1]
        fmaps.append(x)
        return x.reshape(x.shape[0], -1), fmaps


def pooled(wav: jax.Array, times: int) -> jax.Array:
    """``wav [B, T]`` through :func:`avg_pool_1d` ``times`` times (scale ``times``'s input)."""
    for _ in range(times):
        wav = avg_pool_1d(wav)
    return wav


class MultiScaleDiscriminator(DiscriminatorFamily):
    """HiFi-GAN MSD: 3 :class:`ScaleDiscriminator` s on ``wav``, then AvgPool1d(4, 2, 2) once, twice.

    The first scale is spectral-normed, the others weight-normed. ``wav [B, T] -> [(logits,
    fmaps)]`` per scale; scale ``i`` sees ``T_i = T_{i-1} // 2 + 1`` samples.
    """

    family: ClassVar[str] = "msd"  # registry key
    module_name: ClassVar[str] = "msd"  # submodule / checkpoint section name
    num_scales: int = 3
    split_groups: bool = True
    layers: Sequence[tuple[int, int, int, int]] = MSD_LAYERS

    @classmethod
    def from_options(cls, options) -> MultiScaleDiscriminator:
        """The MSD of a ``Discriminators`` (reads its ``split_groups`` and ``msd_layers``)."""
        return cls(split_groups=options.split_groups, layers=options.msd_layers, parent=None)

    def units(self) -> list[SubDiscriminator]:
        return [
            SubDiscriminator(
                self.family,
                self.module_name,
                i,
                ScaleDiscriminator(i == 0, self.split_groups, self.layers, parent=None),
                prepare=functools.partial(pooled, times=i) if i else None,
                spectral=i == 0,
            )
            for i in range(self.num_scales)
        ]
