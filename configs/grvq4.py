"""HiFi-Codec-16k-320d: 16 kHz, hop 320 (50 frames/s), 2 groups x 2 levels x 1024 codes = 2 kbps.

The released model (ref ``egs/HiFi-Codec-16k-320d/config_16k_320d.json``); its checkpoint, and
the 16k-320d-large-universal one, load into this config.
"""

from hificodec_jax import presets


def get_config(arg=None):
    return presets.recipe(
        "hificodec-16k-320d", arg
    )  # the architecture ships in hificodec_jax/presets.py
