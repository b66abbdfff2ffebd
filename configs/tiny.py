"""A tiny HiFi-GAN-family codec for tests and quick local runs (not a released model).

16 kHz, hop 40 (2 x 4 x 5), 2 groups x 2 levels x 64 codes, a 32-d latent and few channels.
"""

from hificodec_jax import config_defaults as d

# A smaller train step for tests and smoke runs, whose time goes into compiling: one resblock
# per stage and two MS-STFT scales (two sub-discriminators, so the step still sequences them),
# about half the compile of the init and of the step. Used with
# ``config.update_from_flattened_dict`` or as ``--config.KEY=VALUE`` flags.
SMALL_STEP_OVERRIDES = {
    "disc.families": ("stft",),
    "disc.stft_n_ffts": (256, 128),
    "model.encoder.resblock_kernel_sizes": (3,),
    "model.encoder.resblock_dilations": ((1,),),
    "model.decoder.resblock_kernel_sizes": (3,),
    "model.decoder.resblock_dilations": ((1,),),
}


def get_config(arg=None):
    model = d.hifigan_model_config(
        upsample_rates=(5, 4, 2),  # ours: hop 40 keeps tests fast
        upsample_kernel_sizes=(11, 8, 4),  # ref kernel/rate pairs
        codebook_size=64,
    )
    model.latent_dim = 32
    model.encoder.base_channels = 4  # stages of 8, 16, 32 channels
    model.encoder.group_size = 4
    model.encoder.resblock_kernel_sizes = (7, 3)
    model.encoder.resblock_dilations = ((1, 3), (1, 3))
    model.decoder.upsample_initial_channel = 32
    model.decoder.resblock_kernel_sizes = (3, 7)
    model.decoder.resblock_dilations = ((1, 3), (1, 3))
    model.quantizer.kmeans_iters = 3
    config = d.base_config(16000, model, arg)
    # Narrow discriminators of the same three families (not the reference widths).
    config.disc.mpd_channels = (4, 8, 16, 16, 16)
    config.disc.msd_layers = ((8, 15, 1, 1), (16, 41, 4, 4), (16, 41, 4, 4), (16, 5, 1, 1))
    config.disc.stft_n_ffts = (512, 256, 128)
    config.disc.stft_filters = 4
    config.data.segment_size = 4000  # 0.25 s: 100 frames at hop 40
    config.batch_size = 8
    config.total_steps = 200
    config.log_every = 10
    config.eval_every = 100
    config.checkpoint_every = 100
    return config
