"""Deprecated alias of :mod:`hificodec_jax.inference.batching`."""

from hificodec_jax.codec import moved
from hificodec_jax.inference.batching import *  # noqa: F403

moved("hificodec_jax.codec.batching", "hificodec_jax.inference.batching")
