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


def base_config(
    sample_rate: int, model: ml_collections.ConfigDict, arg: str | None = None
) -> ml_collections.ConfigDict:
    """Top-level config: ``audio``, ``model``, ``disc``, ``loss``, ``optim``, ``data`` and the
    training loop settings.

    ``arg`` picks the objective: ``None`` = the reference losses with EMA codebooks (our default
    for new training); ``"academicodec"`` = the reference objective exactly (gradient-trained
    codebooks); ``"paper"`` = the paper's losses with EMA codebooks.
    """
    recipe = arg or "academicodec"
    config = ml_collections.ConfigDict()
    config.seed = 1234  # ref seed
    config.audio = ml_collections.ConfigDict(dict(sample_rate=sample_rate))
    config.model = model
    if arg == "academicodec":
        config.model.quantizer.update = "loss"  # ref: codebooks trained by gradient
    config.disc = discriminator_config()
    if arg == "academicodec":
        config.disc.spectral_norm_iterations = "per_call"  # ref: torch's, on every call
    config.loss = loss_config(recipe)
    config.optim = optim_config()
    config.data = ml_collections.ConfigDict(
        dict(
            dir="",  # a directory tree of audio files; empty: the built-in demo corpus
            tfds_dir="",  # or ArrayRecord data prepared by hificodec_jax.data.corpora
            segment_size=16000,  # ref segment_size (16k-320d)
            eval_seconds=4.0,  # ours: held-out clips are cut to this length
        )
    )
    # Mesh (data, fsdp): fsdp > 1 splits params and optimizer moments over that many devices.
    config.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2**14))
    config.batch_size = 64  # ref: global batch 64 (8 per GPU x 8 GPUs) for 16k-320d
    config.total_steps = 1_000_000  # ours; the reference trains 2000 epochs
    # ours: "bfloat16" runs the generator's and discriminators' convs and activations in bf16
    # (params, optimizer, VQ, STFT/mel and losses stay float32; factory.compute_dtype).
    config.precision = "float32"
    config.log_every = 50
    config.eval_every = 5000
    config.checkpoint_every = 5000  # ref checkpoint_interval
    config.keep_checkpoints = 3
    # ours: a model directory or released model name whose generator and codebooks start the
    # training (fresh discriminators and optimizer states); empty: random initialisation.
    config.init_from = ""
    # "G_PTH,DO_PTH": continue a reference run from its g_ + do_ checkpoints (academicodec
    # recipe; reference/resume.py); fresh_stft: a single-GPU do_ lacks MS-STFT's weights.
    config.resume_reference = ""
    config.resume_reference_fresh_stft = False
    return config


def discriminator_config(families=("mpd", "msd", "stft")) -> ml_collections.ConfigDict:
    """Which discriminator families train against the codec (``Discriminators`` fields)."""
    return ml_collections.ConfigDict(
        dict(
            families=tuple(families),  # ref: MPD + MSD + MS-STFT (Encodec's, 32 filters)
            periods=(2, 3, 5, 7, 11),  # ref MPD periods
            stft_n_ffts=(1024, 2048, 512, 256, 128),  # ref MS-STFT scales
            # MSD's spectral-norm power iterations: "per_call" = ref (4 per step), "per_step" =
            # ours (1 per step, in the D phase; models/discriminators.SPECTRAL_NORM_ITERATIONS).
            spectral_norm_iterations="per_step",
        )
    )


def loss_config(recipe: str = "academicodec") -> ml_collections.ConfigDict:
    """Generator/discriminator objective. ``academicodec`` reproduces the reference's
    ``train.py`` exactly; ``paper`` follows the paper's text (hinge loss Eqs. 1-2, normalised
    feature matching Eq. 3, time-domain L1, Eq. 5 sum)."""
    if recipe == "academicodec":
        return ml_collections.ConfigDict(
            dict(
                adversarial="lsgan",  # ref: HiFi-GAN least squares
                feature_matching="reference",  # ref: 2 * sum |f(y) - f(y_hat)| means
                adversarial_weight=1.0,  # ref: plain sum
                feature_weight=1.0,  # ref (the factor 2 is inside the reference FM)
                mel_weight=1.0,  # ref: resolutions carry 45 / 1 / 1
                time_l1_weight=0.0,  # ref: no waveform term
                quantizer_weight=10.0,  # ref: 10 * loss_q
                # ours, off = ref: True takes the feature-matching targets D(real) from the
                # D phase (D before its update) instead of a second forward pass (faster).
                reuse_real_features=False,
            )
        )
    if recipe == "paper":
        return ml_collections.ConfigDict(
            dict(
                adversarial="hinge",  # paper Eqs. 1-2
                feature_matching="normalized",  # paper Eq. 3 (relative L1 per layer)
                adversarial_weight=1.0,  # paper Eq. 5 lambda_adv (ours: 1)
                feature_weight=3.0,  # ours: Encodec's lambda_feat (paper gives no number here)
                mel_weight=1.0,  # reference mel resolutions as the frequency-domain term
                time_l1_weight=0.1,  # ours: Encodec's lambda_t for the time-domain L1
                quantizer_weight=1.0,  # paper Eq. 5 lambda_w (ours: 1)
                reuse_real_features=False,  # ours, see the academicodec recipe
            )
        )
    raise ValueError(f"unknown loss recipe {recipe!r}: 'academicodec' or 'paper'")


def optim_config() -> ml_collections.ConfigDict:
    """Adam for G and D (reference: lr 2e-4, betas 0.5/0.9, ExponentialLR 0.98 per epoch)."""
    one = dict(
        learning_rate=2e-4,  # ref
        b1=0.5,  # ref adam_b1
        b2=0.9,  # ref adam_b2
        eps=1e-8,  # ref (torch Adam default)
        lr_decay=0.98,  # ref lr_decay (per epoch in the reference)
        # ref: lr x lr_decay once per epoch (training clips // batch_size steps, computed and
        # logged at start; 0 = per epoch); > 0 decays every decay_steps steps instead (ours).
        decay_steps=0,
        warmup_steps=0,  # ref: none
        grad_clip_norm=0.0,  # ref: none (0 disables)
    )
    return ml_collections.ConfigDict(dict(g=dict(one), d=dict(one)))
