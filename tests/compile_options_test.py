"""The train step's XLA compiler options: on CPU, 2-D convolutions stay out of YNNPACK (the
MS-STFT discriminator's convs are faster in XLA's own convolution), with the same results;
an XLA that does not know the options compiles without them."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hificodec_jax import train


def _ynn_convolutions(hlo_text: str) -> int:
    """Convolutions inside YNNPACK library fusions of a compiled module's HLO text."""
    count = 0
    ynn = set(
        re.findall(r'calls=%(\S+?), backend_config=\{"fusion_config":\{"kind":"__ynn', hlo_text)
    )
    for name, body in re.findall(r"^%(\S+) \(.*?\{\n(.*?)\n\}", hlo_text, re.M | re.S):
        if name in ynn:
            count += body.count(" convolution(")
    return count


def _conv2d_value_and_grads():
    """An MS-STFT-like layer: 32 -> 32 channels, 3x9 kernel, loss, gradients in and of w."""

    def loss(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (4, 4)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(jnp.square(jax.nn.leaky_relu(y, 0.2)))

    x = jax.random.normal(jax.random.key(0), (2, 9, 65, 32))
    w = jax.random.normal(jax.random.key(1), (3, 9, 32, 32)) * 0.05
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w), (x, w)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-only compiler options")
def test_step_options_keep_2d_convolutions_out_of_ynnpack_with_equal_results():
    lowered, args = _conv2d_value_and_grads()
    default = lowered.compile()
    tuned = train.compile_with_options(lowered, train.step_compiler_options())
    # This XLA puts 2-D convolutions into YNNPACK by default (if it stops doing so, the option
    # has become unnecessary: revisit train._CPU_STEP_OPTIONS).
    assert _ynn_convolutions(default.as_text()) > 0
    assert _ynn_convolutions(tuned.as_text()) == 0
    (v0, (gx0, gw0)), (v1, (gx1, gw1)) = default(*args), tuned(*args)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw1, gw0, rtol=1e-4, atol=1e-3)


def test_unknown_options_compile_without_them(caplog):
    lowered, args = _conv2d_value_and_grads()
    bogus = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"}
    compiled = train.compile_with_options(lowered, bogus)
    value, _ = compiled(*args)
    assert np.isfinite(value)
    assert "compiling without" in caplog.text


def test_compile_step_passes_the_step_options_to_the_step_only(monkeypatch):
    seen = []
    real = train.compile_with_options
    monkeypatch.setattr(
        train, "compile_with_options", lambda lo, opts: seen.append(opts) or real(lo, {})
    )
    config = train.ml_collections.ConfigDict(
        {"batch_size": 2, "data": {"segment_size": 8}, "mesh": {"fsdp": 1}}
    )
    mesh = train.sharding.make_mesh(jax.devices()[:1])
    step = jax.jit(lambda state, batch: (state + jnp.sum(batch["wav"]), {}))
    init = jax.jit(lambda key: jnp.zeros(()))
    abstract = jax.ShapeDtypeStruct((), jnp.float32)
    compiled, init_c = train.compile_step(step, abstract, config, mesh, init=init)
    assert seen == [train.step_compiler_options(), {}]
    wav = jnp.ones((2, 8))
    state, _ = compiled(init_c(jax.random.key(0)), {"wav": wav, "lengths": jnp.full((2,), 8)})
    assert float(state) == 16.0
