"""HiFi-Codec-24k-320d: 24 kHz, hop 320 (75 frames/s), 2 x 2 x 1024 codes = 3 kbps.

The released model (ref ``egs/HiFi-Codec-24k-320d/config_24k_320d.json``); same shapes as 16k-320d.
"""

from hificodec_jax import presets


def get_config(arg=None):
    return presets.recipe(
        "hificodec-24k-320d", arg
    )  # the architecture ships in hificodec_jax/presets.py
