"""GRVQ: EMA updates against hand-computed values, k-means init, dead-code restarts, the
reference's straight-through/detach structure, fewer levels, usage statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hificodec_jax.models.quantizer import GroupResidualVQ


def _ema_vq(**kw):
    fields = dict(
        num_groups=1,
        num_levels=1,
        codebook_size=2,
        dim=2,
        update="ema",
        ema_decay=0.5,
        ema_epsilon=1e-5,
        dead_code_threshold=0.0,
    )
    fields.update(kw)
    return GroupResidualVQ(**fields)


def _state(codebook, sizes):
    codebook = np.asarray(codebook, np.float32)[None, None]  # [R=1, G=1, K, d]
    sizes = np.asarray(sizes, np.float32)[None, None]
    return {
        "codebooks": codebook,
        "cluster_size": sizes,
        "embed_sum": codebook * sizes[..., None],
        "initialized": np.ones((), bool),
    }


X = np.array([[[0.1, 0.0], [0.9, 1.0], [1.2, 0.8]]], np.float32)  # [B=1, F=3, D=2]


def test_ema_update_matches_hand_computation():
    vq = _ema_vq()
    state = _state([[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0])
    out, upd = vq.apply(
        {"vq": state}, X, train=True, mutable=["vq"], rngs={"vq": jax.random.key(0)}
    )
    new = upd["vq"]
    # By hand: x0 -> code 0, x1 and x2 -> code 1.
    np.testing.assert_array_equal(out.codes[0, :, 0], [0, 1, 1])
    size = 0.5 * np.array([1.0, 1.0]) + 0.5 * np.array([1.0, 2.0])  # [1.0, 1.5]
    embed_sum = 0.5 * np.array([[0.0, 0.0], [1.0, 1.0]]) + 0.5 * np.array([[0.1, 0.0], [2.1, 1.8]])
    n, eps = size.sum(), 1e-5
    smoothed = (size + eps) / (n + 2 * eps) * n
    np.testing.assert_allclose(new["cluster_size"][0, 0], size, rtol=1e-6)
    np.testing.assert_allclose(new["embed_sum"][0, 0], embed_sum, rtol=1e-6)
    np.testing.assert_allclose(
        new["codebooks"][0, 0], embed_sum / smoothed[:, None], rtol=1e-5, atol=1e-7
    )
    # Quantized with the *old* codebook; commitment 0.25 * mean((zq - x)^2).
    zq = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(out.loss, 0.25 * np.mean((zq - X[0]) ** 2), rtol=1e-6)
    np.testing.assert_allclose(out.z_q[0], zq, atol=1e-7)


def test_masked_frames_do_not_touch_ema_or_stats():
    vq = _ema_vq()
    state = _state([[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0])
    kw = dict(train=True, mutable=["vq"], rngs={"vq": jax.random.key(0)})
    x_pad = np.concatenate([X, np.full((1, 2, 2), 5.0, np.float32)], axis=1)
    mask = np.array([[True, True, True, False, False]])
    out_a, upd_a = vq.apply({"vq": state}, X, **kw)
    out_b, upd_b = vq.apply({"vq": state}, x_pad, mask, **kw)
    for k in ("codebooks", "cluster_size", "embed_sum"):
        np.testing.assert_allclose(upd_a["vq"][k], upd_b["vq"][k], rtol=1e-6)
    np.testing.assert_allclose(out_a.loss, out_b.loss, rtol=1e-6)
    np.testing.assert_array_equal(out_a.counts, out_b.counts)


def test_kmeans_init_on_first_batch():
    rng = np.random.default_rng(0)
    centres = np.array([[-1.0, 2.0], [3.0, -1.0]], np.float32)
    pts = np.concatenate([c + 0.01 * rng.standard_normal((40, 2)) for c in centres])
    x = pts.astype(np.float32)[None]  # [1, 80, 2]
    vq = _ema_vq(kmeans_iters=5)
    variables = vq.init(jax.random.key(0), x)
    assert not variables["vq"]["initialized"]
    _, upd = vq.apply(variables, x, train=True, mutable=["vq"], rngs={"vq": jax.random.key(3)})
    cb = np.asarray(upd["vq"]["codebooks"][0, 0])
    order = np.argsort(cb[:, 0])
    np.testing.assert_allclose(cb[order], centres, atol=0.01)
    # EMA state starts from the k-means cluster sizes (40 each) then blends in the batch (40).
    np.testing.assert_allclose(upd["vq"]["cluster_size"][0, 0], [40.0, 40.0], rtol=1e-5)
    assert upd["vq"]["initialized"]


def test_dead_codes_restart_from_batch_vectors():
    vq = _ema_vq(codebook_size=3, dead_code_threshold=0.8)
    state = _state([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]], [1.0, 1.0, 1.0])
    _, upd = vq.apply({"vq": state}, X, train=True, mutable=["vq"], rngs={"vq": jax.random.key(0)})
    new = upd["vq"]
    # Code 2 is unused: its EMA size 0.5 < 0.8, so it becomes one of the batch vectors.
    restarted = np.asarray(new["codebooks"][0, 0, 2])
    assert any(np.allclose(restarted, row) for row in X[0])
    np.testing.assert_allclose(new["cluster_size"][0, 0, 2], 0.8)
    np.testing.assert_allclose(new["embed_sum"][0, 0, 2], 0.8 * restarted, rtol=1e-6)
    assert new["cluster_size"][0, 0, 1] == pytest.approx(1.5)  # live code untouched


def test_ema_update_needs_vq_rng():
    vq = _ema_vq()
    with pytest.raises(ValueError, match="'vq' rng"):
        vq.apply({"vq": _state([[0, 0], [1, 1]], [1, 1])}, X, train=True, mutable=["vq"])


def _loss_vq():
    return GroupResidualVQ(num_groups=2, num_levels=2, codebook_size=8, dim=4, update="loss")


def test_straight_through_and_reference_detach_structure():
    vq = _loss_vq()
    z = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 4)), jnp.float32)
    variables = vq.init(jax.random.key(0), z)
    # d z_q / d z is the identity (pure straight-through of level 0).
    zq, vjp = jax.vjp(lambda z: vq.apply(variables, z).z_q, z)
    cot = jnp.asarray(np.random.default_rng(2).standard_normal(z.shape), jnp.float32)
    np.testing.assert_allclose(vjp(cot)[0], cot, atol=1e-6)
    # The loss reaches the encoder only through level 0's commitment term (reference):
    # d/dz [mean_r(...)] = 0.25 * 2 (z - zq_0) / numel / R.
    out = vq.apply(variables, z)
    zq0 = vq.apply(variables, z, num_levels=1).z_q
    grad = jax.grad(lambda z: vq.apply(variables, z).loss)(z)
    np.testing.assert_allclose(grad, 0.25 * 2 * (z - zq0) / z.size / 2, rtol=1e-5, atol=1e-8)
    # Codebooks get the codebook term of both levels (weight 1.0).
    g_cb = jax.grad(lambda p: vq.apply({"params": p}, z).loss)(variables["params"])
    assert np.all(np.isfinite(g_cb["codebooks"])) and np.abs(g_cb["codebooks"][1]).sum() > 0
    assert out.codes.shape == (2, 5, 4) and out.codes.dtype == jnp.int32
    np.testing.assert_allclose(zq, out.z_q)


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_fewer_levels_and_decode_codes(update):
    vq = GroupResidualVQ(num_groups=2, num_levels=3, codebook_size=8, dim=4, update=update)
    z = jnp.asarray(np.random.default_rng(4).standard_normal((2, 6, 4)), jnp.float32)
    variables = vq.init(jax.random.key(0), z)
    full = vq.apply(variables, z)
    for levels in (1, 2, 3):
        part = vq.apply(variables, z, num_levels=levels)
        assert part.codes.shape == (2, 6, 2 * levels)
        np.testing.assert_array_equal(part.codes, full.codes[..., : 2 * levels])
        dec = vq.apply(variables, part.codes, method="decode_codes")
        np.testing.assert_allclose(dec, part.z_q, atol=1e-5)
    with pytest.raises(ValueError, match="num_levels"):
        vq.apply(variables, z, num_levels=4)
    with pytest.raises(ValueError, match="streams"):
        vq.apply(variables, full.codes[..., :3], method="decode_codes")


def test_usage_statistics():
    vq = _ema_vq(codebook_size=4)
    state = _state([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [9.0, 9.0]], [1, 1, 1, 1])
    x = np.array([[[0, 0], [0.1, 0], [1, 1], [5, 5]]], np.float32)  # codes 0, 0, 1, 2
    out = vq.apply({"vq": state}, x)
    np.testing.assert_array_equal(out.counts[0], [2, 1, 1, 0])
    p = np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(out.perplexity[0], np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    assert int(out.dead_codes[0]) == 1
