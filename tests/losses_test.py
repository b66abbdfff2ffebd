"""Tests for ``hificodec_jax.training.losses``: hand-computed values, jit, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hificodec_jax.audio.spectral import mel_spectrogram
from hificodec_jax.training.losses import (
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    multi_resolution_mel_loss,
    reference_mel_resolutions,
    time_l1_loss,
)

pytestmark = pytest.mark.filterwarnings("ignore:Empty filters detected")

# Two sub-discriminators with differently shaped logits.
REAL = [jnp.array([0.5, 1.0]), jnp.array([[2.0]])]
FAKE = [jnp.array([0.5, -1.0]), jnp.array([[0.0]])]

# Feature maps: sub 0 has two layers, sub 1 has one.
FR = [[jnp.array([1.0, -2.0]), jnp.array([[4.0]])], [jnp.array([0.5, 0.5, 0.5, 0.5])]]
FF = [[jnp.array([0.0, -2.0]), jnp.array([[3.0]])], [jnp.array([0.5, 1.5, 0.5, -0.5])]]


def test_lsgan_losses_by_hand():
    # D: sub0 mean(0.5^2, 0^2) + mean(0.5^2, 1^2) = 0.125 + 0.625; sub1 (1-2)^2 + 0^2 = 1
    assert float(jax.jit(lsgan_discriminator_loss)(REAL, FAKE)) == pytest.approx(1.75, abs=1e-7)
    # G: sub0 mean((1-0.5)^2, (1+1)^2) = 2.125; sub1 (1-0)^2 = 1
    assert float(jax.jit(lsgan_generator_loss)(FAKE)) == pytest.approx(3.125, abs=1e-7)
    # perfect discriminator / generator
    assert float(lsgan_discriminator_loss([jnp.ones(3)], [jnp.zeros(3)])) == 0.0
    assert float(lsgan_generator_loss([jnp.ones(3)])) == 0.0


def test_hinge_losses_by_hand():
    # D: sub0 mean(relu(0.5), relu(0)) + mean(relu(1.5), relu(0)) = 0.25 + 0.75; sub1 0 + 1
    assert float(jax.jit(hinge_discriminator_loss)(REAL, FAKE)) == pytest.approx(2.0, abs=1e-7)
    # G: sub0 mean(relu(0.5), relu(2)) = 1.25; sub1 relu(1) = 1
    assert float(jax.jit(hinge_generator_loss)(FAKE)) == pytest.approx(2.25, abs=1e-7)
    # margins saturate: confident D gives zero loss
    assert float(hinge_discriminator_loss([jnp.full(2, 3.0)], [jnp.full(2, -3.0)])) == 0.0


def test_feature_matching_by_hand():
    # layer L1 means: 0.5, 1.0, 0.5 -> reference form 2 * 2.0
    fm = jax.jit(feature_matching_loss)(FR, FF)
    assert float(fm) == pytest.approx(4.0, abs=1e-6)
    # normalised: (0.5/1.5 + 1/4 + 0.5/0.5) / 3 layers
    fm_n = jax.jit(lambda r, f: feature_matching_loss(r, f, normalized=True))(FR, FF)
    assert float(fm_n) == pytest.approx((1 / 3 + 0.25 + 1.0) / 3, abs=1e-6)
    assert float(feature_matching_loss(FR, FR)) == 0.0


def test_feature_matching_gradients():
    def f(real, fake, **kw):
        return feature_matching_loss(real, fake, **kw)

    g_real, g_fake = jax.grad(f, argnums=(0, 1))(FR, FF)
    # d/dff 2*mean|fr-ff| = -2*sign(fr-ff)/n ; first layer: fr-ff = [1, 0]
    np.testing.assert_allclose(g_fake[0][0], [-1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(g_real[0][0], [1.0, 0.0], atol=1e-7)  # real not detached
    g_real_sg = jax.grad(lambda r: f(r, FF, stop_gradient_real=True))(FR)
    assert all(float(jnp.abs(x).sum()) == 0.0 for layer in g_real_sg for x in layer)
    g_n = jax.grad(lambda ff: f(FR, ff, normalized=True))(FF)
    for x in jax.tree_util.tree_leaves(g_n):
        assert bool(jnp.all(jnp.isfinite(x)))


def test_adversarial_gradients_finite():
    for fn in (lsgan_generator_loss, hinge_generator_loss):
        g = jax.grad(fn)(FAKE)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
    # d/dDf mean((1-Df)^2) on [0.5, -1] = -(1-Df) = [-0.5, -2]
    np.testing.assert_allclose(jax.grad(lsgan_generator_loss)(FAKE)[0], [-0.5, -2.0], atol=1e-7)
    gr, gf = jax.grad(lsgan_discriminator_loss, argnums=(0, 1))(REAL, FAKE)
    np.testing.assert_allclose(gr[0], [-0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(gf[0], [0.5, -1.0], atol=1e-7)


def test_time_l1_by_hand():
    wav = jnp.array([[0.0, 1.0, 2.0, 3.0]])
    hat = jnp.array([[1.0, 1.0, 0.0, 3.0]])
    assert float(jax.jit(time_l1_loss)(wav, hat)) == pytest.approx(0.75)
    mask = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    assert float(time_l1_loss(wav, hat, mask)) == pytest.approx(0.5)
    assert float(time_l1_loss(wav[..., None], hat[..., None])) == pytest.approx(0.75)  # [B,T,1]
    g = jax.grad(lambda h: time_l1_loss(wav, h, mask))(hat)
    np.testing.assert_allclose(g, [[0.5, 0.0, 0.0, 0.0]])


def test_reference_mel_resolutions():
    assert reference_mel_resolutions(16000) == (
        (1024, 200, 800, 45.0),
        (512, 120, 512, 1.0),
        (256, 60, 256, 1.0),
    )
    assert reference_mel_resolutions(24000)[0] == (1024, 240, 1024, 45.0)
    with pytest.raises(ValueError):
        reference_mel_resolutions(44100)


def _signals(t: int = 1600) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    wav = rng.standard_normal((2, t)).astype(np.float32) * 0.1
    hat = wav + rng.standard_normal((2, t)).astype(np.float32) * 0.05
    return jnp.asarray(wav), jnp.asarray(hat)


def test_mel_loss_values():
    wav, hat = _signals()
    res = reference_mel_resolutions(16000)
    fn = jax.jit(lambda a, b: multi_resolution_mel_loss(a, b, sample_rate=16000, resolutions=res))
    total0, terms0 = fn(wav, wav)
    assert float(total0) == 0.0 and all(float(v) == 0.0 for v in terms0.values())
    total, terms = fn(wav, hat)
    assert sorted(terms) == ["mel1024_hop200", "mel256_hop60", "mel512_hop120"]
    assert all(float(v) > 0 for v in terms.values())
    want = 45 * terms["mel1024_hop200"] + terms["mel512_hop120"] + terms["mel256_hop60"]
    assert float(total) == pytest.approx(float(want), rel=1e-6)
    kw = dict(sample_rate=16000, n_fft=512, num_mels=80, hop_size=120, win_size=512)
    direct = jnp.mean(jnp.abs(mel_spectrogram(wav, **kw) - mel_spectrogram(hat, **kw)))
    assert float(terms["mel512_hop120"]) == pytest.approx(float(direct), rel=1e-6)


def test_mel_loss_gradients_finite():
    wav, hat = _signals()
    res = reference_mel_resolutions(24000)

    def f(h):
        return multi_resolution_mel_loss(wav, h, sample_rate=24000, resolutions=res)[0]

    grad_f = jax.jit(jax.grad(f))
    for h in (hat, wav, jnp.zeros_like(wav)):
        assert bool(jnp.all(jnp.isfinite(grad_f(h))))
    assert float(jnp.abs(grad_f(hat)).sum()) > 0
    # identical inputs: torch's L1 subgradient sign(0) = 0 gives an exactly zero gradient
    assert float(jnp.abs(grad_f(wav)).max()) == 0.0


def test_mel_loss_lengths_mask():
    wav, hat = _signals(3200)
    res = reference_mel_resolutions(16000)

    @jax.jit
    def f(a, b, lengths=None):
        kw = dict(sample_rate=16000, resolutions=res, lengths=lengths)
        return multi_resolution_mel_loss(a, b, **kw)[0]

    full = jnp.array([3200, 3200])
    assert float(f(wav, hat, full)) == pytest.approx(float(f(wav, hat)), rel=1e-6)
    # item 1 valid for 1600 samples: valid frames only see samples < 1600 + n_fft - pad
    # (at most 1600 + 612), so changing item 1 from sample 2300 on must not matter.
    lengths = jnp.array([3200, 1600])
    hat2 = hat.at[1, 2300:].set(0.7)
    assert float(f(wav, hat2, lengths)) == pytest.approx(float(f(wav, hat, lengths)), rel=1e-6)
    assert float(f(wav, hat2)) != pytest.approx(float(f(wav, hat)), rel=1e-3)
