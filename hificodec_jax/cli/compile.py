"""Compile a training or inference job for a TPU or GPU target on this host (no chip needed;
the [aot] extra) and report whether it fits the chips' memory, with the compiler's estimates."""

from __future__ import annotations

from hificodec_jax.aot.command import add_arguments, run

__all__ = ["add_arguments", "run"]
