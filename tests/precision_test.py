"""``config.precision = "bfloat16"``: the generator and discriminators compute in bf16 while
parameters, optimizer states, the quantizer and every loss stay float32; one train step's loss
terms are close to float32's, and a short bf16 run lowers the mel loss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_init, tiny_step_config

from hificodec_jax import factory
from hificodec_jax.data.demo_audio import synthetic_speech
from hificodec_jax.training import sharding
from hificodec_jax.training.compilation import build


def _batch(n=8, seg=4000):
    wav = np.stack([synthetic_speech(16000, seg / 16000, seed=i) for i in range(n)])
    return {"wav": wav, "lengths": np.full((n,), seg, np.int32)}


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


def test_bf16_codec_computes_in_bf16_and_returns_float32():
    cfg = tiny_step_config()
    codec32 = factory.build_codec(cfg)
    cfg.precision = "bfloat16"
    codec16 = factory.build_codec(cfg)
    variables = fast_init(codec32, 4000)
    wav = _batch(4)["wav"]
    z32 = jax.jit(functools.partial(codec32.apply, method="encode_latent"))(variables, wav)
    z16 = jax.jit(functools.partial(codec16.apply, method="encode_latent"))(variables, wav)
    decode = functools.partial(codec16.apply, method="decode_latent")
    y32 = jax.jit(functools.partial(codec32.apply, method="decode_latent"))(variables, z32)
    y16 = jax.jit(decode)(variables, z32)
    assert z16.dtype == y16.dtype == jnp.float32
    # bf16 keeps 8 significant bits (relative rounding 2^-9), accumulated over the layers.
    assert 1e-3 < _rel(z32, z16) < 3e-2 and 1e-3 < _rel(y32, y16) < 3e-2
    jaxpr = str(jax.make_jaxpr(decode)(variables, z32))
    assert "bf16[" in jaxpr and "conv_general_dilated" in jaxpr


def test_config_precision_is_checked():
    cfg = tiny_step_config()
    cfg.precision = "float16"
    with pytest.raises(ValueError, match="config.precision"):
        factory.build_codec(cfg)


def test_bf16_step_is_close_to_float32_and_trains():
    mesh = sharding.make_mesh(jax.devices()[:1])
    batch = sharding.shard_batch(_batch(), mesh)
    metrics, state0 = {}, None
    for precision in ("float32", "bfloat16"):
        cfg = tiny_step_config()
        cfg.precision = precision
        _, init, _, step = build(cfg, mesh)
        if state0 is None:
            state0 = jax.device_get(init(jax.random.key(0)))
        state, m = step(jax.device_put(state0), batch)
        metrics[precision] = [jax.device_get(m)]
        if precision == "bfloat16":
            for _ in range(4):
                state, m = step(state, batch)
                metrics[precision].append(jax.device_get(m))
            # Parameters, optimizer states and EMA codebook statistics stay float32.
            dtypes = {
                x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)
            }
            assert dtypes == {jnp.dtype(jnp.float32)}
    f32, bf16 = metrics["float32"][0], metrics["bfloat16"][0]
    for key, value in f32.items():
        if not key.startswith("loss/"):
            continue
        # The mel terms: the bf16 encoder's rounding flips the codes at near-ties, which moves
        # the reconstruction; the other terms only see bf16's rounding.
        rtol = 0.15 if key.startswith(("loss/mel", "loss/g_total")) else 5e-3
        np.testing.assert_allclose(bf16[key], value, rtol=rtol, err_msg=key)
    mel = [float(m["loss/mel"]) for m in metrics["bfloat16"]]
    assert all(b < a for a, b in zip(mel, mel[1:], strict=False)), mel  # bf16 lowers the mel loss
