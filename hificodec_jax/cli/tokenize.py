"""Tokenize a corpus into codes for a codec language model: exact, resumable, sharded over
processes; --verify checks a finished store (the [train] extra; docs/tokenize.md)."""

from __future__ import annotations

from hificodec_jax.tokens.command import add_arguments, run

__all__ = ["add_arguments", "run"]
