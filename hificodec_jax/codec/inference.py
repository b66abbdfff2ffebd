"""Deprecated alias of :mod:`hificodec_jax.inference.long_files`."""

from hificodec_jax.codec import moved
from hificodec_jax.inference.long_files import *  # noqa: F403

moved("hificodec_jax.codec.inference", "hificodec_jax.inference.long_files")
