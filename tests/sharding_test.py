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
