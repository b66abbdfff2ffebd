"""HiFi-Codec-16k-320d: 16 kHz, hop 320 (50 frames/s), 2 groups x 2 levels x 1024 codes = 2 kbps.

The released model (ref ``egs/HiFi-Codec-16k-320d/config_16k_320d.json``); its checkpoint, and
the 16k-320d-large-universal one, load into this config.
"""

from hificodec_jax import config_defaults as d


def get_config(arg=None):
    model = d.hifigan_model_config(
        upsample_rates=(8, 5, 4, 2),  # ref, hop 320
        upsample_kernel_sizes=(16, 11, 8, 4),  # ref
    )
    return d.base_config(16000, model, arg)  # ref sampling_rate
