"""HiFi-Codec-24k-240d: 24 kHz, hop 240 (100 frames/s), 2 x 2 x 1024 codes = 4 kbps.

The released model (ref ``egs/HiFi-Codec-24k-240d/config_24k_240d.json``).
"""

from hificodec_jax import config_defaults as d


def get_config(arg=None):
    del arg
    model = d.hifigan_model_config(
        upsample_rates=(8, 5, 3, 2),  # ref, hop 240
        upsample_kernel_sizes=(16, 11, 7, 4),  # ref
    )
    return d.base_config(24000, model)  # ref sampling_rate
