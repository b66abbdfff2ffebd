"""Deprecated alias of :mod:`hificodec_jax.reference.convert`."""

from hificodec_jax.codec import moved
from hificodec_jax.reference.convert import *  # noqa: F403

moved("hificodec_jax.codec.convert", "hificodec_jax.reference.convert")
