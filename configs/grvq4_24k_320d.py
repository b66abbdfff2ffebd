"""HiFi-Codec-24k-320d: 24 kHz, hop 320 (75 frames/s), 2 x 2 x 1024 codes = 3 kbps.

The released model (ref ``egs/HiFi-Codec-24k-320d/config_24k_320d.json``); same shapes as 16k-320d.
"""

from hificodec_jax import config_defaults as d


def get_config(arg=None):
    model = d.hifigan_model_config(
        upsample_rates=(8, 5, 4, 2),  # ref, hop 320
        upsample_kernel_sizes=(16, 11, 8, 4),  # ref
    )
    config = d.base_config(24000, model, arg)  # ref sampling_rate
    config.data.segment_size = 16000  # ref segment_size
    config.batch_size = 80  # ref batch_size (global)
    return config
