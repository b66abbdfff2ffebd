"""Defaults shared by the config files in ``configs/`` (each one's ``get_config(arg)`` starts here).

Values carry a comment on where they come from: "ref" = AcademiCodec's released configs /
code (``egs/HiFi-Codec-*/config_*.json``, ``models.py``), "paper" = the HiFi-Codec paper
(arXiv 2305.02765), "ours" = a choice of this project.
"""

from __future__ import annotations

import ml_collections

RESBLOCK_DILATIONS = ((1, 3, 5), (1, 3, 5), (1, 3, 5))  # ref resblock_dilation_sizes


def quantizer_config(
    num_groups: int = 2, num_levels: int = 2, codebook_size: int = 1024
) -> ml_collections.ConfigDict:
    """GRVQ hyper-parameters (``GroupResidualVQ`` fields)."""
    return ml_collections.ConfigDict(
        dict(
            num_groups=num_groups,  # ref n_code_groups 2
            num_levels=num_levels,  # ref hard-codes 2 residual levels
            codebook_size=codebook_size,  # ref n_codes 1024
            # ours: EMA codebooks for new training; "loss" reproduces the reference's
            # gradient-trained codebooks (codebook_weight 1.0, commitment 0.25: ref lambdas).
            update="ema",
            commitment_weight=0.25,  # ref commitment_loss_lambda
            codebook_weight=1.0,  # ref codebook_loss_lambda (used in "loss" mode only)
            ema_decay=0.99,  # ours (VQ-VAE-2 / SoundStream / Encodec practice)
            ema_epsilon=1e-5,  # ours: Laplace smoothing of cluster sizes
            kmeans_iters=10,  # ours: k-means init on the first batch (SoundStream, Encodec)
            dead_code_threshold=1.0,  # ours: restart codes whose EMA usage drops below 1
        )
    )


def hifigan_model_config(
    upsample_rates=(8, 5, 4, 2), upsample_kernel_sizes=(16, 11, 8, 4), **quantizer
) -> ml_collections.ConfigDict:
    """The released HiFi-Codec architecture with the given decoder rates (encoder mirrors them)."""
    return ml_collections.ConfigDict(
        dict(
            family="hifigan",
            latent_dim=512,  # ref hard-codes 512 (conv_post / conv_pre / quantizer reshape)
            encoder=dict(
                strides=tuple(reversed(upsample_rates)),  # ref: reversed upsample_rates
                kernel_sizes=tuple(reversed(upsample_kernel_sizes)),
                resblock_kernel_sizes=(11, 7, 3),  # ref: reversed resblock_kernel_sizes
                resblock_dilations=RESBLOCK_DILATIONS,
                base_channels=32,  # ref: stage i has 32 * 2**(i+1) channels
                group_size=16,  # ref: GroupNorm(ch // 16, ch, eps=1e-6)
            ),
            decoder=dict(
                upsample_rates=tuple(upsample_rates),  # ref upsample_rates
                upsample_kernel_sizes=tuple(upsample_kernel_sizes),  # ref upsample_kernel_sizes
                upsample_initial_channel=512,  # ref upsample_initial_channel
                resblock_kernel_sizes=(3, 7, 11),  # ref resblock_kernel_sizes
                resblock_dilations=RESBLOCK_DILATIONS,
            ),
            quantizer=quantizer_config(**quantizer),
        )
    )


def base_config(sample_rate: int, model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Top-level config: ``audio``, ``model`` and the seed."""
    config = ml_collections.ConfigDict()
    config.seed = 1234  # ref seed
    config.audio = ml_collections.ConfigDict(dict(sample_rate=sample_rate))
    config.model = model
    return config
