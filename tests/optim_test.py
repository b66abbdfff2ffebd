"""The learning-rate schedule against the reference's: ``ExponentialLR(gamma=0.98)`` stepped
once per epoch, so the rate during 0-based epoch ``e`` is ``2e-4 * 0.98**e`` (values below
computed by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from hificodec_jax.config_defaults import optim_config
from hificodec_jax.training import optim


def _rates(cfg, steps, steps_per_epoch=None):
    schedule = optim.make_schedule(cfg, steps_per_epoch)
    return [float(schedule(s)) for s in steps]


def test_default_decays_once_per_epoch_as_the_reference():
    cfg = optim_config().g
    assert cfg.decay_steps == 0 and cfg.lr_decay == 0.98 and cfg.learning_rate == 2e-4
    # An epoch of 100 steps: steps 0-99 are epoch 0, 100-199 epoch 1, 250 is in epoch 2.
    got = _rates(cfg, [0, 99, 100, 199, 250], steps_per_epoch=100)
    np.testing.assert_allclose(got, [2e-4, 2e-4, 1.96e-4, 1.96e-4, 1.9208e-4], rtol=1e-6)
    # The case: ~33,000-step epochs (LibriTTS at batch 64); step 100k is in epoch 3.
    np.testing.assert_allclose(_rates(cfg, [100_000], 33_000), [1.882384e-4], rtol=1e-6)


def test_decay_steps_overrides_the_epoch():
    cfg = optim_config().g
    cfg.decay_steps = 1000
    np.testing.assert_allclose(
        _rates(cfg, [999, 1000, 2500], steps_per_epoch=33_000), [2e-4, 1.96e-4, 1.9208e-4]
    )
    assert optim.decay_interval(cfg, 33_000) == 1000


def test_without_a_dataset_the_rate_stays_at_its_first_epoch_value():
    cfg = optim_config().g
    assert _rates(cfg, [0, 10**6]) == [2e-4, 2e-4]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.make_schedule(cfg, 0)


def test_warmup_then_per_epoch_decay():
    cfg = optim_config().g
    cfg.warmup_steps = 10
    got = _rates(cfg, [5, 10, 109, 110], steps_per_epoch=100)
    np.testing.assert_allclose(got, [1e-4, 2e-4, 2e-4, 1.96e-4], rtol=1e-6)
