"""The GAN train step on the tiny config: losses go down, 8 devices == 1 device (EMA statistics
included), non-finite input skips the update without touching the state."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conv_forms, tiny_step_config

from hificodec_jax import config_defaults
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.models.discriminators import Discriminators, sub_discriminators
from hificodec_jax.training import losses, sharding
from hificodec_jax.training.compilation import batch_spec, build
from hificodec_jax.training.step import (
    adversarial_wave_gradient,
    discriminator_gradients,
    real_and_fake,
)


@functools.cache
def tiny_config():
    return tiny_step_config()  # MS-STFT only, one resblock per stage: a short compile in CI


def _batch(n=8, seg=4000, seed=0):
    wav = np.stack([synthetic_speech(16000, seg / 16000, seed=seed + i) for i in range(n)])
    lengths = np.full((n,), seg, np.int32)
    lengths[1] = 3000  # one zero-padded clip
    wav[1, 3000:] = 0.0
    return {"wav": wav, "lengths": lengths}


@functools.cache
def _built(n: int, fsdp: int = 1, reuse_real_features: bool = False):
    """Mesh, state initialiser, abstract state and step of the tiny config on ``n`` devices.

    Cached, so tests that need the same step share one compilation."""
    cfg = tiny_config()
    if fsdp > 1 or reuse_real_features:
        cfg = cfg.copy_and_resolve_references()
        if fsdp > 1:
            cfg.mesh.fsdp, cfg.mesh.fsdp_min_size = fsdp, 0  # shard every divisible leaf
        cfg.loss.reuse_real_features = reuse_real_features
    mesh = sharding.make_mesh(jax.devices()[:n], fsdp=fsdp)
    _, init, abstract, step = build(cfg, mesh)
    return mesh, init, abstract, step


class Runner:
    """A state and its jitted step on a mesh of ``n`` devices."""

    def __init__(
        self, n: int, fsdp: int = 1, like: Runner | None = None, reuse_real_features=False
    ):
        self.mesh, init, abstract, self.step_fn = _built(n, fsdp, reuse_real_features)
        if like is None:
            self.state = init(jax.random.key(0))
        else:  # the same initial state, laid out on this mesh (skips compiling `init` again)
            shardings = jax.tree.map(lambda s: s.sharding, abstract)
            self.state = jax.device_put(jax.device_get(like.state), shardings)

    def step(self, batch):
        self.state, metrics = self.step_fn(self.state, sharding.shard_batch(batch, self.mesh))
        return jax.device_get(metrics)


def _assert_metrics_close(a: dict, b: dict):
    """Step metrics of two runs of one step on different meshes, to float rounding.

    What the G phase computes against the *updated* D (adversarial and feature-matching losses,
    their total, G's gradient norm) gets 1e-3: Adam's first update is ~lr * sign(g), so a
    rounding-level near-zero D gradient can flip a D weight's step by 2 lr (see the params
    checks), which moves those values by up to ~1e-4 of their scale. Everything else agrees to
    2e-5.
    """
    against_updated_d = ("loss/adv_", "loss/fm_", "loss/g_total", "grad_norm/g")
    for k, v in a.items():
        rtol = 1e-3 if k.startswith(against_updated_d) else 2e-5
        np.testing.assert_allclose(v, b[k], rtol=rtol, atol=1e-6, err_msg=k)


def _assert_close(a_tree, b_tree, *, rtol=0.0, atol=0.0, scaled_atol=0.0):
    """Leaf-wise closeness; ``scaled_atol`` is relative to each leaf's largest magnitude."""
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(a_tree)[0], jax.tree.leaves(b_tree), strict=True
    ):
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.floating):
            tol = atol + scaled_atol * float(np.max(np.abs(a), initial=0.0))
            np.testing.assert_allclose(a, b, rtol=rtol, atol=tol, err_msg=str(path))
        else:
            np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_step_on_eight_devices_equals_one_and_learns():
    batch = _batch()
    one = Runner(1)
    eight = Runner(8, like=one)
    m1, m8 = one.step(batch), eight.step(batch)
    # One step: everything computed from the batch agrees to float rounding: losses, gradient
    # norms, Adam moments, and the EMA codebook statistics (global-batch sums, not a shard's).
    _assert_metrics_close(m1, m8)
    s1, s8 = jax.device_get(one.state), jax.device_get(eight.state)
    _assert_close(s1.vq, s8.vq, rtol=1e-5, atol=1e-6)
    _assert_close(s1.spectral, s8.spectral, rtol=1e-5, atol=1e-6)
    # Gradients (Adam's moments) agree to 1e-4 of each tensor's scale for D; G's are taken
    # against the *updated* D, whose weights may differ by 2 lr (below), hence 1e-3.
    _assert_close(s1.g_opt_state, s8.g_opt_state, scaled_atol=1e-3, atol=1e-9)
    _assert_close(s1.d_opt_state, s8.d_opt_state, scaled_atol=1e-4, atol=1e-9)
    # Adam's first update is ~lr * sign(g): a rounding-level near-zero gradient can flip a
    # weight's step, so params agree to 2 lr.
    lr = tiny_config().optim.g.learning_rate
    _assert_close(s1.g_params, s8.g_params, atol=2 * lr + 1e-6)
    _assert_close(s1.d_params, s8.d_params, atol=2 * lr + 1e-6)
    assert bool(s1.vq["quantizer"]["initialized"]) and int(s1.step) == 1
    # Two more steps: the same trajectory, and the mel loss goes down.
    hist = [m1]
    for _ in range(2):
        a, b = one.step(batch), eight.step(batch)
        for k in ("loss/g_total", "loss/d_total", "loss/mel"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, err_msg=k)
        hist.append(a)
    assert hist[-1]["loss/mel"] < hist[0]["loss/mel"]
    assert hist[-1]["train/skipped_g"] == 0 and hist[-1]["train/skipped_d"] == 0
    expected = {
        "loss/adv_stft", "loss/fm_stft", "loss/d_stft", "grad_norm/g", "grad_norm/d",
        "lr/g", "lr/d", "vq/dead_codes", "vq/perplexity_r1g1", "loss/quantizer",
    }  # fmt: skip
    assert expected <= set(m1)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_eight_device_step_convolves_in_canonical_form():
    """Every convolution of the step on 8 CPU devices, gradients included, is in the form XLA
    CPU runs as a library call. The discriminators run inside a ``shard_map`` there, where XLA
    had left jax's gradient convs inside platform choices as naive loops (the step took 12x its
    time; ``grouped_conv.dense_conv``)."""
    mesh, _, abstract, step = _built(8)
    hlo = step.lower(abstract, batch_spec(tiny_config(), mesh)).compile().as_text()
    labels = set(conv_forms(hlo))
    assert labels and labels <= {"b0f_0io->b0f", "b01f_01io->b01f"}, labels


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_fsdp_mesh_equals_data_parallel():
    # From codebooks already initialised (by one step on the data-parallel mesh): the first
    # step's k-means initialisation on the batch's frames is chaotic under float rounding. On an
    # AVX-512 machine FSDP's rounding led k-means to different centroids (cluster sizes up to 3
    # frames apart, mel loss 8.5e-5 apart), while the step from initialised codebooks agreed to
    # 2.4e-6. The initialising step itself is compared across meshes in the 8-device test.
    batch = _batch(seed=3)
    dp = Runner(8)
    dp.step(_batch(seed=7))
    fsdp = Runner(8, fsdp=4, like=dp)
    sharded = [
        x for x in jax.tree.leaves(fsdp.state) if not x.sharding.is_fully_replicated
    ]  # parameters and Adam moments split over the fsdp axis, 1/4 per device
    assert len(sharded) > len(jax.tree.leaves(fsdp.state)) // 2
    assert all(x.addressable_shards[0].data.size * 4 == x.size for x in sharded)
    m_dp, m_fsdp = dp.step(batch), fsdp.step(batch)
    _assert_metrics_close(m_dp, m_fsdp)
    s_dp, s_fsdp = jax.device_get(dp.state), jax.device_get(fsdp.state)
    _assert_close(s_dp.vq, s_fsdp.vq, rtol=1e-5, atol=1e-6)
    lr = tiny_config().optim.g.learning_rate
    _assert_close(s_dp.g_params, s_fsdp.g_params, atol=2 * lr + 1e-6)
    _assert_close(s_dp.d_params, s_fsdp.d_params, atol=2 * lr + 1e-6)
    assert int(s_fsdp.step) == 2


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_initial_state_is_the_same_on_every_mesh():
    # The initialiser draws with an unsafe_rbg key (models.layers.param_init_key, XLA's
    # RngBitGenerator): the draws must not depend on the mesh or on FSDP's sharding. Only weight
    # norm's g, a norm that FSDP computes as a sharded reduction, may differ (by float rounding).
    one, eight, fsdp = (
        jax.device_get(_built(n, f)[1](jax.random.key(0))) for n, f in [(1, 1), (8, 1), (8, 4)]
    )
    _assert_close(one, eight)  # exactly
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(one)[0], jax.tree.leaves(fsdp), strict=True
    ):
        if "weight_g" in jax.tree_util.keystr(path):
            np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=jax.tree_util.keystr(path))
        else:
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    # The draws are torch's conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and no two parameter
    # arrays share their values (one key per parameter path).
    vs = {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path((one.g_params, one.d_params))[0]
        if "weight_v" in jax.tree_util.keystr(p)
    }
    big = max((v for k, v in vs.items() if "ups" not in k), key=np.size)  # not transposed
    bound = 1.0 / np.sqrt(np.prod(big.shape[:-1]))  # channels-last kernels: fan_in = K * C_in
    assert big.size > 5000 and np.abs(big).max() <= bound
    np.testing.assert_allclose(big.std(), bound / np.sqrt(3.0), rtol=0.03)
    assert abs(big.mean()) < 0.03 * bound
    firsts = [v.ravel()[:8].tobytes() for v in vs.values()]
    assert len(set(firsts)) == len(firsts) > 20


def test_mel_loss_falls_over_thirty_steps():
    runner = Runner(1)
    batches = [_batch(seed=10 * i) for i in range(3)]  # cycled: 30 steps over 24 clips
    mel = [float(runner.step(batches[i % 3])["loss/mel"]) for i in range(30)]
    first, last = np.mean(mel[:3]), np.mean(mel[-3:])
    assert last < 0.85 * first, mel
    assert np.all(np.isfinite(mel))


def test_non_finite_batch_skips_update():
    runner = Runner(1)
    before = jax.device_get(runner.state)
    bad = _batch()
    bad["wav"][2, 100] = np.nan
    metrics = runner.step(bad)
    after = jax.device_get(runner.state)
    assert int(metrics["train/skipped_g"]) == 1 and int(metrics["train/skipped_d"]) == 1
    for a, b in zip(jax.tree.leaves(before.g_params), jax.tree.leaves(after.g_params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before.vq), jax.tree.leaves(after.vq), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(after.step) == 1  # the step still counts; the update does not happen


def _small_setup(recipe):
    """Loss config and functions, narrow discriminators of every family, and a batch of 2."""
    lc = config_defaults.loss_config(recipe)
    hinge = lc.adversarial == "hinge"
    d_loss_fn = losses.hinge_discriminator_loss if hinge else losses.lsgan_discriminator_loss
    g_adv_fn = losses.hinge_generator_loss if hinge else losses.lsgan_generator_loss
    discs = Discriminators(
        periods=(2, 3),
        stft_n_ffts=(256, 128),
        mpd_channels=(4, 8),
        msd_layers=((8, 15, 1, 1), (8, 41, 4, 4)),
        stft_filters=4,
    )
    rng = np.random.default_rng(1)
    target = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 800)), jnp.float32)
    wav_hat = jnp.asarray(rng.uniform(-0.5, 0.5, (2, 800)), jnp.float32)
    return lc, d_loss_fn, g_adv_fn, discs, target, wav_hat


@pytest.mark.parametrize("recipe", ["academicodec", "paper"])
def test_one_sub_discriminator_at_a_time_equals_the_whole_objective(recipe):
    """The step's D phase (losses, parameter gradients, spectral update) and G-phase
    dL/dwav_hat, computed one sub-discriminator at a time, equal the gradients of the whole
    objective written over ``Discriminators.__call__`` (all families in one expression)."""
    lc, d_loss_fn, g_adv_fn, discs, target, wav_hat = _small_setup(recipe)
    normalized = lc.feature_matching == "normalized"
    variables = discs.init(jax.random.key(0), target)
    params, spectral = variables["params"], variables["spectral"]
    d_in = real_and_fake(target, wav_hat)  # rows real_0, fake_0, real_1, fake_1
    units = sub_discriminators(discs)

    def whole_d(p):
        out, upd = discs.apply(
            {"params": p, "spectral": spectral}, d_in, update_stats=True, mutable=["spectral"]
        )
        parts = {
            f"loss/d_{f}": d_loss_fn([lg[0::2] for lg, _ in subs], [lg[1::2] for lg, _ in subs])
            for f, subs in out.items()
        }
        return sum(parts.values()), (parts, upd["spectral"])

    (_, (ref_parts, ref_spec)), ref_grads = jax.jit(jax.value_and_grad(whole_d, has_aux=True))(
        params
    )
    parts, grads, new_spec, _ = jax.jit(
        lambda p, s, x: discriminator_gradients(units, p, s, x, d_loss_fn)
    )(params, spectral, d_in)
    assert set(parts) == set(ref_parts) == {"loss/d_mpd", "loss/d_msd", "loss/d_stft"}
    for k, v in ref_parts.items():
        np.testing.assert_allclose(parts[k], v, rtol=1e-5, err_msg=k)
    _assert_close(ref_grads, grads, rtol=1e-4, scaled_atol=1e-5)
    _assert_close(ref_spec, new_spec, rtol=1e-5, atol=1e-7)

    spectral = new_spec  # after the D phase's power iteration, as in the step

    def whole_g(wh):
        out = discs.apply({"params": params, "spectral": spectral}, jnp.concatenate([target, wh]))
        total, parts = 0.0, {}
        for f, subs in out.items():
            parts[f"loss/adv_{f}"] = g_adv_fn([lg[2:] for lg, _ in subs])
            parts[f"loss/fm_{f}"] = losses.feature_matching_loss(
                [[m[:2] for m in fm] for _, fm in subs],
                [[m[2:] for m in fm] for _, fm in subs],
                normalized=normalized,
            )
            total += lc.adversarial_weight * parts[f"loss/adv_{f}"]
            total += lc.feature_weight * parts[f"loss/fm_{f}"]
        return total, parts

    (ref_total, ref_parts), ref_dwav = jax.jit(jax.value_and_grad(whole_g, has_aux=True))(wav_hat)
    parts, dwav = jax.jit(
        lambda p, s, t, wh: adversarial_wave_gradient(units, p, s, t, wh, g_adv_fn, lc)
    )(params, spectral, target, wav_hat)
    np.testing.assert_allclose(parts.pop("loss/adversarial_total"), ref_total, rtol=1e-5)
    assert set(parts) == set(ref_parts)
    for k, v in ref_parts.items():
        np.testing.assert_allclose(parts[k], v, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(
        dwav, ref_dwav, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref_dwav).max())
    )
    assert float(jnp.abs(dwav).max()) > 0


def test_reused_real_features_are_the_d_phase_forward():
    """``loss.reuse_real_features``: the G phase's feature-matching targets are D(real) from
    the D phase (parameters *before* the update, spectral vectors after its power iteration),
    the fake features come from the updated D. Checked against the whole objective written
    over ``Discriminators.__call__`` with those two parameter sets (the reference recipe; the
    mechanism does not depend on the loss forms, which the test above covers for both)."""
    lc, d_loss_fn, g_adv_fn, discs, target, wav_hat = _small_setup("academicodec")
    normalized = lc.feature_matching == "normalized"
    variables = discs.init(jax.random.key(0), target)
    p0, spectral = variables["params"], variables["spectral"]
    units = sub_discriminators(discs)
    d_in = real_and_fake(target, wav_hat)
    d_phase = jax.jit(
        lambda p, s, x: discriminator_gradients(units, p, s, x, d_loss_fn, keep_real_fmaps=True)
    )
    parts, grads, spec, real_fmaps = d_phase(p0, spectral, d_in)
    plain = jax.jit(lambda p, s, x: discriminator_gradients(units, p, s, x, d_loss_fn))
    ref_parts, ref_grads, ref_spec, kept = plain(p0, spectral, d_in)
    assert kept is None
    for k, v in ref_parts.items():  # keeping the features does not change the D phase
        np.testing.assert_allclose(parts[k], v, rtol=1e-6, err_msg=k)
    _assert_close(ref_grads, grads, rtol=1e-6, scaled_atol=1e-7)
    assert len(real_fmaps) == len(units)
    p1 = jax.tree.map(lambda p, g: p - 0.05 * jnp.sign(g), p0, grads)  # an updated D

    def whole_g(wh):
        real = discs.apply({"params": p0, "spectral": spec}, target)
        fake = discs.apply({"params": p1, "spectral": spec}, wh)
        total, parts = 0.0, {}
        for f, subs in fake.items():
            parts[f"loss/adv_{f}"] = g_adv_fn([lg for lg, _ in subs])
            parts[f"loss/fm_{f}"] = losses.feature_matching_loss(
                [fm for _, fm in real[f]], [fm for _, fm in subs], normalized=normalized
            )
            total += lc.adversarial_weight * parts[f"loss/adv_{f}"]
            total += lc.feature_weight * parts[f"loss/fm_{f}"]
        return total, parts

    (ref_total, ref_parts), ref_dwav = jax.jit(jax.value_and_grad(whole_g, has_aux=True))(wav_hat)
    g_phase = jax.jit(
        lambda p, s, t, wh, r: adversarial_wave_gradient(units, p, s, t, wh, g_adv_fn, lc, r)
    )
    parts, dwav = g_phase(p1, spec, target, wav_hat, real_fmaps)
    np.testing.assert_allclose(parts.pop("loss/adversarial_total"), ref_total, rtol=1e-5)
    for k, v in ref_parts.items():
        np.testing.assert_allclose(parts[k], v, rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(
        dwav, ref_dwav, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref_dwav).max())
    )
    fresh, _ = g_phase(p1, spec, target, wav_hat, None)  # D(real) recomputed with p1
    for f in ("mpd", "msd", "stft"):
        np.testing.assert_allclose(fresh[f"loss/adv_{f}"], parts[f"loss/adv_{f}"], rtol=1e-6)
        assert abs(float(fresh[f"loss/fm_{f}"]) / float(parts[f"loss/fm_{f}"]) - 1) > 1e-3, f


def test_step_with_reused_real_features_changes_only_feature_matching():
    """The train step wires ``loss.reuse_real_features`` through: on the same state and batch
    the D phase, the adversarial and the mel losses are the same; feature matching is not."""
    plain = Runner(1)
    reuse = Runner(1, like=plain, reuse_real_features=True)
    batch = _batch(seed=5)
    m_plain, m_reuse = plain.step(batch), reuse.step(batch)
    for k in ("loss/d_stft", "grad_norm/d", "loss/adv_stft", "loss/mel"):
        np.testing.assert_allclose(m_reuse[k], m_plain[k], rtol=1e-5, err_msg=k)
    assert abs(float(m_reuse["loss/fm_stft"]) / float(m_plain["loss/fm_stft"]) - 1) > 1e-5
