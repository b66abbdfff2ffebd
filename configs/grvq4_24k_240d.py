"""HiFi-Codec-24k-240d: 24 kHz, hop 240 (100 frames/s), 2 x 2 x 1024 codes = 4 kbps.

The released model (ref ``egs/HiFi-Codec-24k-240d/config_24k_240d.json``).
"""

from hificodec_jax import config_defaults as d


def get_config(arg=None):
    model = d.hifigan_model_config(
        upsample_rates=(8, 5, 3, 2),  # ref, hop 240
        upsample_kernel_sizes=(16, 11, 7, 4),  # ref
    )
    config = d.base_config(24000, model, arg)  # ref sampling_rate
    config.data.segment_size = 12000  # ref segment_size
    config.batch_size = 32  # ref batch_size (global)
    return config
