"""The unit every discriminator family is built from: one sub-discriminator and its input.

A family module (:mod:`.period_discriminator`, :mod:`.scale_discriminator`,
:mod:`.stft_discriminator`) owns its sub-discriminators: it lists them as
:class:`SubDiscriminator` s (the network, what it does to the waveform first, whether it keeps
spectral-norm state, and its parameter path), and its multi-discriminator is a
:class:`DiscriminatorFamily` over that list. The composite ``Discriminators`` and the train
step's one-at-a-time path run the same units, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["DiscriminatorFamily", "SubDiscriminator", "assemble"]


@dataclasses.dataclass(frozen=True)
class SubDiscriminator:
    """One sub-discriminator: ``wav [B, T] -> (logits, fmaps)``, usable inside or outside a family.

    Its variables are the subtree ``variables[collection][scope][f"discriminators_{index}"]``
    of the whole model's (``path``), so a train step can run (and differentiate) one
    sub-discriminator at a time: the activations of only one are alive at once, and the
    sub-discriminators' parameter gradients are disjoint subtrees of the whole gradient.
    """

    family: str  # registry key: "mpd" | "msd" | "stft"
    scope: str  # the family's submodule (= checkpoint section) name: "mpd" | "msd" | "mstftd"
    index: int  # position within the family
    module: nn.Module  # unbound (parent=None) network
    prepare: Callable[[jax.Array], jax.Array] | None = None  # applied to wav first (MSD's pools)
    spectral: bool = False  # has "spectral" (power-iteration) variables; takes update_stats
    # Compute dtype (None: the input's); the logits and feature maps come back float32.
    dtype: jnp.dtype | None = None

    @property
    def num_fmaps(self) -> int:
        """Feature maps it returns (static; the normalised feature matching averages them)."""
        return self.module.num_fmaps

    @property
    def path(self) -> tuple[str, str]:
        return self.scope, f"discriminators_{self.index}"

    def subtree(self, tree):
        """This sub-discriminator's part of a ``params``/``spectral`` tree (``{}`` if absent)."""
        family, name = self.path
        return tree.get(family, {}).get(name, {})

    def run(self, module: nn.Module, wav: jax.Array, *, update_stats: bool = False):
        """Call ``module`` (this unit's network, bound or inside a parent) on ``wav``."""
        if self.dtype is not None:
            wav = wav.astype(self.dtype)
        if self.prepare is not None:
            wav = self.prepare(wav)
        out = module(wav, update_stats=update_stats) if self.spectral else module(wav)
        return out if self.dtype is None else jax.tree.map(lambda a: a.astype(jnp.float32), out)

    def apply(self, params, spectral, wav: jax.Array, *, update_stats: bool = False, calls=1):
        """``wav [B, T] -> ((logits, fmaps), new spectral subtree)`` with this one's variables.

        Equals the corresponding entry of the family's (and ``Discriminators``') output
        (``params``/``spectral`` are this sub-discriminator's subtrees). ``calls > 1``: ``wav``
        interleaves that many calls' batches row by row (row ``i`` belongs to call
        ``i % calls``, as the train step lays out real and fake rows, so a batch split over
        chips keeps its rows), and a spectral-normed unit with ``update_stats`` runs the calls
        one after another, one power iteration before each (torch's training-mode calls); the
        outputs come back interleaved the same way, the vectors are the last call's.
        """
        if not self.spectral:
            return self.module.apply({"params": params}, wav, method=self._call_plain), {}
        if update_stats and calls > 1:
            if wav.shape[0] % calls:
                raise ValueError(f"batch of {wav.shape[0]} does not split into {calls} calls")
            outs = []
            for i in range(calls):
                out, spectral = self.apply(params, spectral, wav[i::calls], update_stats=True)
                outs.append(out)

            def interleave(*a):
                return jnp.stack(a, axis=1).reshape(-1, *a[0].shape[1:])

            return jax.tree.map(interleave, *outs), spectral
        out, upd = self.module.apply(
            {"params": params, "spectral": spectral},
            wav,
            update_stats,
            method=self._call_spectral,
            mutable=["spectral"],
        )
        return out, upd["spectral"]

    def _call_plain(self, module: nn.Module, wav: jax.Array):
        return self.run(module, wav)

    def _call_spectral(self, module: nn.Module, wav: jax.Array, update_stats: bool):
        return self.run(module, wav, update_stats=update_stats)


class DiscriminatorFamily(nn.Module):
    """A family's multi-discriminator: its units as ``discriminators_i``, run in order.

    Subclasses set ``family`` (registry key) and ``module_name`` (submodule and checkpoint section
    name) and define :meth:`units` (their sub-discriminators, from their own fields) and
    :meth:`from_options` (the family of a ``Discriminators``, from its fields). ``__call__(wav [B, T], *, update_stats=False) -> [(logits, fmaps)]``; ``update_stats``
    reaches only spectral-normed units (needs ``mutable=["spectral"]``).
    """

    family: ClassVar[str] = ""
    module_name: ClassVar[str] = ""

    @classmethod
    def from_options(cls, options) -> DiscriminatorFamily:
        raise NotImplementedError

    def units(self) -> list[SubDiscriminator]:
        raise NotImplementedError

    def setup(self):
        self._units = tuple(self.units())
        self.discriminators = [u.module for u in self._units]  # adopted as discriminators_i

    def __call__(
        self, wav: jax.Array, *, update_stats: bool = False
    ) -> list[tuple[jax.Array, list[jax.Array]]]:
        return [
            u.run(d, wav, update_stats=update_stats)
            for u, d in zip(self._units, self.discriminators, strict=True)
        ]


def assemble(units: list[SubDiscriminator], parts: list) -> dict:
    """Per-sub-discriminator subtrees (``parts[i]`` for ``units[i]``) -> one nested tree."""
    tree: dict = {}
    for unit, part in zip(units, parts, strict=True):
        family, name = unit.path
        if part:
            tree.setdefault(family, {})[name] = part
    return tree
