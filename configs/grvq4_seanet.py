"""HiFi-Codec as the paper's text describes it (SEANet-style, ``family = "seanet"``), GRVQ 2 x 2.

Default: 16 kHz, strides (2, 4, 5, 8) = hop 320 (50 frames/s), 2 groups x 2 levels x 1024 codes
= 2 kbps, ``C = 32`` channels, ``B = 4`` blocks, 2-layer LSTM, 512-d latent. Not a released
model: no checkpoint exists for it, it is trained from scratch.

``get_config(arg)`` picks one of the paper's three stride settings:

* ``None`` / ``""`` (``configs/grvq4_seanet.py``): 16 kHz, (2, 4, 5, 8), hop 320, 2 kbps;
* ``"24k_240"`` (``configs/grvq4_seanet.py:24k_240``): 24 kHz, (2, 4, 5, 6), hop 240, 4 kbps;
* ``"hop32"`` (``configs/grvq4_seanet.py:hop32``): 16 kHz (ours: the sample rate is our pick),
  (2, 2, 2, 4), hop 32 (500 frames/s), 20 kbps.

A leading ``":"`` in ``arg`` is ignored.
"""

import ml_collections

from hificodec_jax import config_defaults as d

_SETTINGS = {
    "": (16000, (2, 4, 5, 8)),  # paper strides, hop 320 at 16 kHz (as the released 16k-320d)
    "24k_240": (24000, (2, 4, 5, 6)),  # paper strides, hop 240 at 24 kHz (as 24k-240d)
    "hop32": (16000, (2, 2, 2, 4)),  # paper strides; sample rate ours
}


def get_config(arg=None):
    key = (arg or "").lstrip(":")
    if key not in _SETTINGS:
        raise ValueError(f"unknown setting {arg!r}; one of {sorted(_SETTINGS)}")
    sample_rate, strides = _SETTINGS[key]
    model = ml_collections.ConfigDict(
        dict(
            family="seanet",
            latent_dim=512,  # paper D (as the released model's 512)
            encoder=dict(
                strides=strides,  # paper, encoder order
                channels=32,  # paper C
                lstm_layers=2,  # paper: 2-layer LSTM
                residual_kernel_size=3,  # paper: residual unit of two kernel-3 convs
                activation="elu",  # ours (SEANet's ELU; the paper does not say)
            ),
            decoder=dict(
                strides=tuple(reversed(strides)),  # paper: the decoder mirrors the encoder
                channels=32,  # paper C, channels of the last (finest) block
                lstm_layers=2,  # paper
                residual_kernel_size=3,  # paper
                activation="elu",  # ours
                tanh_output=True,  # ours (as the released decoder)
            ),
            quantizer=d.quantizer_config(),  # paper 2 groups x 2 levels x 1024 codes
        )
    )
    return d.base_config(sample_rate, model)
