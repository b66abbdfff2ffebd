"""HiFi-Codec-24k-240d: 24 kHz, hop 240 (100 frames/s), 2 x 2 x 1024 codes = 4 kbps.

The released model (ref ``egs/HiFi-Codec-24k-240d/config_24k_240d.json``).
"""

from hificodec_jax import presets


def get_config(arg=None):
    return presets.recipe(
        "hificodec-24k-240d", arg
    )  # the architecture ships in hificodec_jax/presets.py
