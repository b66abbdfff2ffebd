"""Data parallelism: the codec's train forward and EMA statistics on 8 CPU devices (batch
sharded with NamedSharding) equal the single-device result."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import config, fast_init, noise
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import hificodec_jax


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_eight_devices_equal_one():
    cfg = config("tiny")
    codec = hificodec_jax.build_codec(cfg)
    wav = noise((8, 400), seed=0)
    lengths = np.array([400, 360, 400, 200, 400, 400, 120, 400])
    variables = fast_init(codec, 400)

    def step(variables, wav, lengths):
        def loss_fn(params):
            out, upd = codec.apply(
                {**variables, "params": params},
                wav,
                lengths,
                train=True,
                mutable=["vq"],
                rngs={"vq": jax.random.key(7)},
            )
            rec = jnp.sum(jnp.abs(out.wav_hat - wav) * out.frame_mask.repeat(codec.hop, 1))
            return rec / jnp.sum(lengths) + out.loss, (upd["vq"], out.stats.perplexity)

        (loss, (vq, ppl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return loss, vq, ppl, grads

    single = jax.jit(step)(variables, wav, lengths)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    data = NamedSharding(mesh, P("data"))
    repl = NamedSharding(mesh, P())
    sharded = jax.jit(step, in_shardings=(repl, data, data), out_shardings=repl)(
        jax.device_put(variables, repl), jax.device_put(wav, data), jax.device_put(lengths, data)
    )
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    # The EMA statistics really are global-batch statistics (not one shard's).
    sizes = np.asarray(sharded[1]["quantizer"]["cluster_size"])
    assert sizes.shape == (2, 2, 64)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_on_own_rows_equals_the_whole_batch_and_gathers_no_rows():
    """A per-row function with whole parameters (an FFT and a matmul) run by each device on its
    own rows: the same values and parameter gradient as unmapped, and no all-gather in the
    program (the partitioner alone may gather a batch-sharded FFT's input)."""
    from hificodec_jax.training import sharding

    def fn(w, state, x):
        spec = jnp.abs(jnp.fft.rfft(x, axis=-1)) @ w
        return spec, state * 2.0  # per-row output, and one from the whole arguments alone

    def loss(w, state, x, f):
        rows, new_state = f(w, state, x)
        return jnp.mean(rows**2) + jnp.sum(new_state), rows

    mesh = sharding.make_mesh(jax.devices()[:8])
    x = noise((16, 64), seed=1)
    w = noise((33, 5), seed=2)
    state = jnp.ones((3,))
    mapped = sharding.on_own_rows(fn, mesh, whole_args=2, whole_output=True)
    assert sharding.on_own_rows(fn, None) is fn

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=3)
    want_g, want_rows = grad(w, state, x, fn)
    x_sharded = jax.device_put(x, sharding.data_sharding(mesh))
    got_g, got_rows = grad(w, state, x_sharded, mapped)
    np.testing.assert_allclose(got_rows, want_rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-6)
    hlo = grad.lower(w, state, x_sharded, mapped).compile().as_text()
    assert "all-gather" not in hlo
    unmapped = grad.lower(w, state, x_sharded, fn).compile().as_text()
    assert "all-gather" in unmapped  # what the map avoids, here on the CPU's partitioner too
