"""Tests for ``hificodec_jax.models.discriminators``: exact parameter counts, shapes against the
reference's formulas, the two speed rewrites (per-group convs, MPD folded into 1-D convs) against
their direct forms, spectral norm against an SVD, the STFT front end and pooling against numpy,
and a jitted gradient through all three families.

Full-width models are only traced (``jax.eval_shape``); numerics run on narrow variants.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hificodec_jax.models.discriminators import (
    Discriminators,
    GroupedConv1d,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    MultiScaleSTFTDiscriminator,
    PeriodDiscriminator,
    assemble,
    avg_pool_1d,
    grouped_conv1d,
    power_iterations,
    power_iterations_per_call,
    spectral_normalize,
    sub_discriminators,
)
from hificodec_jax.models.layers import weight_norm_kernel
from hificodec_jax.models.stft_discriminator import stft_features
from hificodec_jax.training.step import real_and_fake

KEY = jax.random.key(0)


def _noise(shape, seed=0, scale=0.5):
    return jnp.asarray(np.random.default_rng(seed).uniform(-scale, scale, shape), jnp.float32)


def _fake_variables(module, *args, seed=0):
    """Random variables shaped like ``module.init``'s, built in numpy (no RNG compiles).

    Kernels ``U(+-1/sqrt(fan_in))``, biases ``U(+-0.1)``, weight-norm ``g = 1`` (unit-norm
    filters), spectral-norm ``u``/``v`` random unit vectors.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, KEY, *args)

    def fill(path, s):
        name = path[-1].key
        if name == "weight_g":
            return jnp.ones(s.shape, s.dtype)
        if name in ("u", "v") and path[0].key == "spectral":
            a = rng.normal(size=s.shape)
            return jnp.asarray(a / np.linalg.norm(a), s.dtype)
        bound = 1 / math.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _size(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_param_counts_match_reference():
    x = jax.ShapeDtypeStruct((1, 4000), jnp.float32)
    mpd = jax.eval_shape(MultiPeriodDiscriminator().init, KEY, x)
    msd = jax.eval_shape(MultiScaleDiscriminator().init, KEY, x)
    stft = jax.eval_shape(MultiScaleSTFTDiscriminator().init, KEY, x)
    assert _size(mpd["params"]) == 41_105_770
    assert _size(msd["params"]) == 29_618_821  # trainable only
    assert _size(stft["params"]) == 472_330
    assert set(mpd) == set(stft) == {"params"}
    # Only MSD's first scale is spectral-normed: power-iteration vectors u [C_out], v [C_in/G*K].
    assert set(msd["spectral"]) == {"discriminators_0"}
    assert msd["spectral"]["discriminators_0"]["convs_1"]["u"].shape == (128,)
    assert msd["spectral"]["discriminators_0"]["convs_1"]["v"].shape == (32 * 41,)
    sn, wn = msd["params"]["discriminators_0"], msd["params"]["discriminators_1"]
    assert set(sn["convs_0"]) == {"kernel", "bias"} and sn["convs_2"]["kernel"].shape == (
        41,
        8,
        256,
    )
    assert wn["convs_2"]["weight_g"].shape == (1, 1, 256)
    p0 = mpd["params"]["discriminators_0"]
    assert p0["convs_0"]["weight_v"].shape == (5, 1, 32) and p0["conv_post"]["bias"].shape == (1,)
    s0 = stft["params"]["discriminators_0"]
    assert set(s0["convs_0"]) == {"kernel", "bias"} and s0["convs_0"]["kernel"].shape == (
        3,
        9,
        2,
        32,
    )
    assert s0["convs_1"]["weight_g"].shape == (1, 1, 1, 32)


def _conv_len(n, k, s, p, d=1):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def test_shapes_match_reference_formulas():
    b, t = 2, 4000
    d = Discriminators()
    x = jax.ShapeDtypeStruct((b, t), jnp.float32)
    variables = jax.eval_shape(d.init, KEY, x)
    out = jax.eval_shape(d.apply, variables, x)
    assert list(out) == ["mpd", "msd", "stft"]
    for p, (logits, fmaps) in zip((2, 3, 5, 7, 11), out["mpd"], strict=True):
        n = math.ceil(t / p)  # reflect-padded, folded: reference map (B, C, n, p)
        want = []
        for i, c in enumerate((32, 128, 512, 1024, 1024)):
            n = _conv_len(n, 5, 3 if i < 4 else 1, 2)
            want.append((b, n, p, c))
        want.append((b, n, p, 1))
        assert [f.shape for f in fmaps] == want
        assert logits.shape == (b, n * p)
    n = t
    for logits, fmaps in out["msd"]:
        want, m = [], n
        for c, k, s in ((128, 15, 1), (128, 41, 2), (256, 41, 2), (512, 41, 4), (1024, 41, 4)):
            m = _conv_len(m, k, s, (k - 1) // 2)
            want.append((b, m, c))
        want += [(b, m, 1024), (b, m, 1024), (b, m, 1)]
        assert [f.shape for f in fmaps] == want and logits.shape == (b, m)
        n = (n + 4 - 4) // 2 + 1  # AvgPool1d(4, 2, padding=2)
    for n_fft, (logits, fmaps) in zip((1024, 2048, 512, 256, 128), out["stft"], strict=True):
        frames, f = 1 + (t - n_fft) // (n_fft // 4), n_fft // 2 + 1
        want = [(b, frames, f, 32)]
        for _ in range(3):
            f = _conv_len(f, 9, 2, 4)
            want.append((b, frames, f, 32))
        want.append((b, frames, f, 32))
        assert [m.shape for m in fmaps] == want and logits.shape == (b, frames, f, 1)


@pytest.mark.parametrize("c_in,c_out,groups,stride", [(32, 64, 4, 2), (64, 64, 16, 4)])
def test_split_groups_equals_feature_group_count(c_in, c_out, groups, stride):
    x = _noise((2, 97, c_in), seed=1)
    kernel = _noise((41, c_in // groups, c_out), seed=2, scale=0.1)
    kw = dict(stride=stride, padding=(20, 20), groups=groups)

    @jax.jit
    def outputs_and_grads(x, kernel):
        res = []
        for split in (True, False):

            def f(x, k, split=split):
                y = grouped_conv1d(x, k, split_groups=split, **kw)
                return jnp.sum(jnp.sin(y)), y

            res.append(jax.grad(f, (0, 1), has_aux=True)(x, kernel))
        return res

    ((gx_split, gk_split), y_split), ((gx_xla, gk_xla), y_xla) = outputs_and_grads(x, kernel)
    np.testing.assert_allclose(y_split, y_xla, atol=1e-5)
    np.testing.assert_allclose(gx_split, gx_xla, atol=1e-4)
    np.testing.assert_allclose(gk_split, gk_xla, atol=1e-4)


def test_period_discriminator_equals_2d_form():
    """Folded 1-D MPD == reference's (k, 1) 2-D convs on the (B, 1, T/p, p) view."""
    b, t, p = 2, 100, 3  # 100 % 3 != 0: reflect padding
    d = PeriodDiscriminator(p, channels=(4, 8, 8))
    wav = _noise((b, t), seed=3)
    params = _fake_variables(d, wav)["params"]
    logits, fmaps = jax.jit(d.apply)({"params": params}, wav)

    x = np.pad(np.asarray(wav), ((0, 0), (0, p - t % p)), mode="reflect")
    x = jnp.asarray(x.reshape(b, 1, -1, p))  # torch's x.view(b, c, t // p, p)
    ref_fmaps = []
    names = [f"convs_{i}" for i in range(3)] + ["conv_post"]
    for i, name in enumerate(names):
        w = weight_norm_kernel(params[name]["weight_g"], params[name]["weight_v"])  # [K, I, O]
        w = jnp.transpose(w, (2, 1, 0))[..., None]  # torch (O, I, K, 1)
        k = w.shape[2]
        stride = 3 if i < 2 else 1
        x = (
            jax.lax.conv_general_dilated(
                x,
                w,
                (stride, 1),
                ((k // 2, k // 2), (0, 0)),
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
            )
            + params[name]["bias"][None, :, None, None]
        )
        if name != "conv_post":
            x = jax.nn.leaky_relu(x, 0.1)
        ref_fmaps.append(x)
    assert len(fmaps) == len(ref_fmaps)
    for ours, ref in zip(fmaps, ref_fmaps, strict=True):
        np.testing.assert_allclose(ours, jnp.transpose(ref, (0, 2, 3, 1)), atol=1e-5)
    np.testing.assert_allclose(logits, ref_fmaps[-1].reshape(b, -1), atol=1e-5)


def test_spectral_norm_power_iteration():
    conv = GroupedConv1d(24, 5, groups=2, norm="spectral")
    x = _noise((1, 30, 16), seed=4)
    variables = _fake_variables(conv, x)
    params, spec = variables["params"], variables["spectral"]
    w = np.asarray(params["kernel"]).transpose(2, 1, 0).reshape(24, -1)  # torch (O, I/G * K)
    sigma_svd = np.linalg.svd(w, compute_uv=False)[0]

    # update_stats=False leaves the state alone; update_stats=True runs one torch-style step.
    _, same = conv.apply(variables, x, mutable=["spectral"])
    np.testing.assert_array_equal(same["spectral"]["u"], spec["u"])
    _, new = conv.apply(variables, x, update_stats=True, mutable=["spectral"])
    v1 = w.T @ np.asarray(spec["u"])
    v1 /= np.linalg.norm(v1)
    u1 = w @ v1
    np.testing.assert_allclose(new["spectral"]["v"], v1, atol=1e-6)
    np.testing.assert_allclose(new["spectral"]["u"], u1 / np.linalg.norm(u1), atol=1e-6)

    def step(spec):
        variables = {"params": params, "spectral": spec}
        return conv.apply(variables, x, update_stats=True, mutable=["spectral"])[1]["spectral"]

    step = jax.jit(step)
    for _ in range(60):
        spec = step(spec)
    w_sn, _, _, sigma = spectral_normalize(params["kernel"], spec["u"], spec["v"])
    np.testing.assert_allclose(sigma, sigma_svd, rtol=1e-4)
    w_sn = np.asarray(w_sn).transpose(2, 1, 0).reshape(24, -1)
    assert np.linalg.svd(w_sn, compute_uv=False)[0] == pytest.approx(1.0, abs=1e-4)
    y = conv.apply({"params": params, "spectral": spec}, x)
    y_ref = grouped_conv1d(x, jnp.asarray(params["kernel"]) / sigma, padding=(2, 2), groups=2)
    np.testing.assert_allclose(y, y_ref + params["bias"], atol=1e-5)


def test_init_like_torch():
    """torch's default conv init, and weight norm starting at ``g = ||v||`` (effective W = v)."""
    conv = GroupedConv1d(8, 5, groups=2)
    p = conv.init(KEY, jnp.zeros((1, 9, 4)))["params"]
    assert float(jnp.abs(p["weight_v"]).max()) <= 1 / math.sqrt(2 * 5)
    norms = jnp.sqrt(jnp.sum(jnp.square(p["weight_v"]), axis=(0, 1), keepdims=True))
    np.testing.assert_allclose(p["weight_g"], norms, rtol=1e-6)


def test_avg_pool_counts_padding():
    x = _noise((2, 11), seed=5)
    xp = np.pad(np.asarray(x), ((0, 0), (2, 2)))
    n = (11 + 4 - 4) // 2 + 1
    ref = np.stack([xp[:, 2 * i : 2 * i + 4].sum(-1) / 4 for i in range(n)], axis=-1)
    np.testing.assert_allclose(avg_pool_1d(x), ref, atol=1e-6)


def test_stft_features_match_numpy():
    n_fft, hop = 128, 32
    wav = _noise((2, 700), seed=6)
    ours = stft_features(wav, n_fft, hop)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    x = np.asarray(wav, np.float64)
    frames = np.stack([x[:, i * hop : i * hop + n_fft] for i in range(1 + (700 - n_fft) // hop)], 1)
    spec = np.fft.rfft(frames * w, axis=-1) / np.sqrt(np.sum(w**2))
    assert ours.shape == (2, frames.shape[1], n_fft // 2 + 1, 2)
    np.testing.assert_allclose(ours[..., 0], spec.real, atol=1e-4)
    np.testing.assert_allclose(ours[..., 1], spec.imag, atol=1e-4)


def test_jit_grad_finite_all_families():
    """Narrow widths, same structure (grouped convs split per group, spectral norm, 2-D convs)."""
    d = Discriminators(
        periods=(3,),
        stft_n_ffts=(128,),
        mpd_channels=(4, 8),
        msd_layers=((8, 15, 1, 1), (8, 41, 4, 4)),
        stft_filters=4,
    )
    wav = _noise((2, 600), seed=7)
    variables = _fake_variables(d, wav)

    def loss(params, spec, wav):
        out, new = d.apply(
            {"params": params, "spectral": spec}, wav, update_stats=True, mutable=["spectral"]
        )
        total = sum(
            jnp.mean(jnp.square(1.0 - lg)) + sum(jnp.mean(jnp.abs(f)) for f in fm)
            for subs in out.values()
            for lg, fm in subs
        )
        return total, new["spectral"]

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
    (g_params, g_wav), new_spec = grad_fn(variables["params"], variables["spectral"], wav)
    g_params, g_wav, new_spec, old_spec = jax.tree.map(
        np.asarray, (g_params, g_wav, new_spec, variables["spectral"])
    )
    assert all(np.isfinite(a).all() for a in jax.tree.leaves((g_params, g_wav)))
    assert np.abs(g_wav).sum() > 0
    assert all(np.abs(a).sum() > 0 for a in jax.tree.leaves(g_params))
    # One power iteration moved every vector (conv_post's u [1] is a unit scalar: stays +-1).
    changed = jax.tree.map(lambda a, b: a.size == 1 or (a != b).any(), new_spec, old_spec)
    assert all(jax.tree.leaves(changed))


def test_sub_discriminators_one_at_a_time_equal_the_whole():
    """Each sub-discriminator applied alone on its variable subtrees gives the whole model's
    entry (logits, fmaps, and the spectral-norm update); the subtrees reassemble the trees."""
    d = Discriminators(
        periods=(2, 3),
        stft_n_ffts=(256, 128),
        mpd_channels=(4, 8),
        msd_layers=((8, 15, 1, 1), (8, 41, 4, 4)),
        stft_filters=4,
    )
    wav = _noise((2, 700), seed=8)
    variables = _fake_variables(d, wav)
    whole, whole_spec = d.apply(variables, wav, update_stats=True, mutable=["spectral"])
    units = sub_discriminators(d)
    assert [(u.family, u.index) for u in units] == [
        ("mpd", 0), ("mpd", 1), ("msd", 0), ("msd", 1), ("msd", 2), ("stft", 0), ("stft", 1),
    ]  # fmt: skip
    new_spec = []
    for unit in units:
        (logits, fmaps), spec = unit.apply(
            unit.subtree(variables["params"]),
            unit.subtree(variables["spectral"]),
            wav,
            update_stats=True,
        )
        ref_logits, ref_fmaps = whole[unit.family][unit.index]
        np.testing.assert_array_equal(logits, ref_logits)
        assert len(fmaps) == len(ref_fmaps) == unit.num_fmaps
        for a, b in zip(fmaps, ref_fmaps, strict=True):
            np.testing.assert_array_equal(a, b)
        assert bool(spec) == (unit.family == "msd" and unit.index == 0)
        new_spec.append(spec)
    rebuilt = assemble(units, [u.subtree(variables["params"]) for u in units])
    assert jax.tree.structure(rebuilt) == jax.tree.structure(variables["params"])
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(variables["params"]), strict=True):
        assert a is b
    spec_tree = assemble(units, new_spec)
    assert jax.tree.structure(spec_tree) == jax.tree.structure(whole_spec["spectral"])
    for a, b in zip(
        jax.tree.leaves(spec_tree), jax.tree.leaves(whole_spec["spectral"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_separate_calls_iterate_like_torch():
    """``calls=2`` runs the spectral-normed scale on the even (real) and the odd (fake) rows as
    two training-mode calls (one power iteration before each, torch's ``D(y)`` then
    ``D(y_hat)``): the outputs, interleaved back, and the last vectors are two sequential calls',
    and the two see different sigmas. The vectors equal two stored-vector iterations
    (:func:`power_iterations`)."""
    d = Discriminators(families=("msd",), msd_layers=((8, 15, 1, 1), (8, 41, 4, 4)))
    unit = sub_discriminators(d)[0]
    assert unit.spectral
    real, fake = _noise((2, 400), seed=10), _noise((2, 400), seed=11, scale=0.2)
    variables = _fake_variables(d, real)
    params, spec = unit.subtree(variables["params"]), unit.subtree(variables["spectral"])
    rows = real_and_fake(real, fake)  # real_0, fake_0, real_1, fake_1
    (both, both_fmaps), spec2 = unit.apply(params, spec, rows, update_stats=True, calls=2)
    (lr, fr), spec_r = unit.apply(params, spec, real, update_stats=True)
    (lf, ff), spec_f = unit.apply(params, spec_r, fake, update_stats=True)
    np.testing.assert_array_equal(both, real_and_fake(lr, lf))
    for a, r, f in zip(both_fmaps, fr, ff, strict=True):
        np.testing.assert_array_equal(a, real_and_fake(r, f))
    for a, b in zip(jax.tree.leaves(spec2), jax.tree.leaves(spec_f), strict=True):
        np.testing.assert_array_equal(a, b)
    # one batched call: one iteration, so the fake half differs (random vectors: far from converged)
    (one, _), spec1 = unit.apply(params, spec, rows, update_stats=True)
    # (a batch of 4 rows against 2: XLA CPU may round the convs' sums differently, by an ulp)
    np.testing.assert_allclose(one[0::2], lr, rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(one[1::2] - lf)) > 1e-3 * np.max(np.abs(lf))
    iterated = {"msd": {"discriminators_0": power_iterations(params, spec, 2)}}
    stored = {"msd": {"discriminators_0": spec2}}
    for a, b in zip(jax.tree.leaves(iterated), jax.tree.leaves(stored), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="3 calls"):
        unit.apply(params, spec, real, update_stats=True, calls=3)
    assert not power_iterations_per_call(d)
    assert power_iterations_per_call(d.clone(spectral_norm_iterations="per_call"))
    with pytest.raises(ValueError, match="spectral_norm_iterations='torch'"):
        power_iterations_per_call(d.clone(spectral_norm_iterations="torch"))


def test_a_new_family_is_one_module_and_one_registry_line(monkeypatch):
    """A family registered by name alone runs in the composite and in the one-at-a-time path,
    under its own submodule name, with the same numbers in both."""
    from typing import ClassVar

    from hificodec_jax.models import discriminators as dmod
    from hificodec_jax.models.discriminator_units import DiscriminatorFamily, SubDiscriminator

    class ToyFamily(DiscriminatorFamily):
        family: ClassVar[str] = "toy"
        module_name: ClassVar[str] = "toyd"
        periods: tuple = (2, 3)

        @classmethod
        def from_options(cls, options):
            return cls(parent=None)

        def units(self):
            return [
                SubDiscriminator(
                    self.family,
                    self.module_name,
                    i,
                    PeriodDiscriminator(p, channels=(4,), parent=None),
                    prepare=lambda w: 2.0 * w,
                )
                for i, p in enumerate(self.periods)
            ]

    monkeypatch.setitem(dmod.REGISTRY, "toy", ToyFamily)
    d = Discriminators(families=("toy",))
    wav = _noise((2, 300), seed=9)
    variables = _fake_variables(d, wav)
    assert list(variables["params"]) == ["toyd"]
    assert sorted(variables["params"]["toyd"]) == ["discriminators_0", "discriminators_1"]
    whole = d.apply(variables, wav)["toy"]
    units = sub_discriminators(d)
    assert [(u.family, u.path) for u in units] == [
        ("toy", ("toyd", "discriminators_0")), ("toy", ("toyd", "discriminators_1")),
    ]  # fmt: skip
    for unit, (ref_logits, _) in zip(units, whole, strict=True):
        (logits, _), _ = unit.apply(unit.subtree(variables["params"]), {}, wav)
        np.testing.assert_array_equal(logits, ref_logits)
    # The input transform is the unit's: the family's first sub-discriminator sees 2 * wav.
    direct = PeriodDiscriminator(2, channels=(4,)).apply(
        {"params": variables["params"]["toyd"]["discriminators_0"]}, 2.0 * wav
    )[0]
    np.testing.assert_array_equal(whole[0][0], direct)
