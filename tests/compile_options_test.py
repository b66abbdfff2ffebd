"""The train step's XLA compiler options: on CPU, 2-D convolutions stay out of YNNPACK (the
MS-STFT discriminator's convs are faster in XLA's own convolution), with the same results;
an XLA that does not know the options compiles without them; ``compilation.build``'s step
carries them, however it is compiled."""

from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import tiny_step_config, ynn_convolutions

from hificodec_jax.training import compilation, sharding


def _conv2d_value_and_grads(compiler_options=None):
    """An MS-STFT-like layer: 32 -> 32 channels, 3x9 kernel, loss, gradients in and of w."""

    def loss(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (4, 4)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(jnp.square(jax.nn.leaky_relu(y, 0.2)))

    x = jax.random.normal(jax.random.key(0), (2, 9, 65, 32))
    w = jax.random.normal(jax.random.key(1), (3, 9, 32, 32)) * 0.05
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), compiler_options=compiler_options)
    return fn.lower(x, w).compile(), (x, w)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-only compiler options")
def test_step_options_keep_2d_convolutions_out_of_ynnpack_with_equal_results():
    default, args = _conv2d_value_and_grads()
    tuned, _ = _conv2d_value_and_grads(compilation.step_compiler_options())
    # This XLA puts 2-D convolutions into YNNPACK by default (if it stops doing so, the option
    # has become unnecessary: revisit compilation._CPU_STEP_OPTIONS).
    assert ynn_convolutions(default.as_text()) > 0
    assert ynn_convolutions(tuned.as_text()) == 0
    (v0, (gx0, gw0)), (v1, (gx1, gw1)) = default(*args), tuned(*args)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw1, gw0, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU-only compiler options")
def test_unknown_options_are_dropped_with_a_warning(monkeypatch, caplog):
    bogus = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"}
    monkeypatch.setattr(compilation, "_CPU_STEP_OPTIONS", bogus)
    assert compilation.step_compiler_options() == {}
    assert "compiling the train step without" in caplog.text
    # The accepted options are still found (the check is cached per set of options).
    monkeypatch.undo()
    assert compilation.step_compiler_options() == compilation._CPU_STEP_OPTIONS
    compiled, args = _conv2d_value_and_grads(compilation.step_compiler_options())
    assert np.isfinite(compiled(*args)[0])


def test_compile_step_compiles_the_step_and_init_as_they_are_jitted():
    config = ml_collections.ConfigDict(
        {"batch_size": 2, "data": {"segment_size": 8}, "mesh": {"fsdp": 1}}
    )
    mesh = sharding.make_mesh(jax.devices()[:1])
    step = jax.jit(lambda state, batch: (state + jnp.sum(batch["wav"]), {}))
    init = jax.jit(lambda key: jnp.zeros(()))
    abstract = jax.ShapeDtypeStruct((), jnp.float32)
    timings, t = {}, time.perf_counter()
    compiled, init_c = compilation.compile_step(
        step, abstract, config, mesh, init=init, timings=timings
    )
    wall = time.perf_counter() - t  # each program's own compile time lies within the call's
    assert set(timings) == {"step", "init"} and all(0 < s < wall for s in timings.values())
    batch = {"wav": jnp.ones((2, 8)), "lengths": jnp.full((2,), 8)}
    state, _ = compiled(init_c(jax.random.key(0)), batch)
    assert float(state) == 16.0
    timings = {}
    resumed, none = compilation.compile_step(step, abstract, config, mesh, timings=timings)
    assert none is None and set(timings) == {"step"}  # no init when resuming
    assert float(resumed(state, batch)[0]) == 32.0


def test_compile_step_raises_a_step_error_without_waiting_for_the_initialiser():
    release, compiled = threading.Event(), threading.Event()

    class SlowInit:  # a jitted initialiser whose compile outlasts the step's tracing error
        def lower(self, key):
            return self

        def compile(self):
            release.wait(60)  # set by the test once compile_step has raised
            compiled.set()

    config = ml_collections.ConfigDict(
        {"batch_size": 2, "data": {"segment_size": 8}, "mesh": {"fsdp": 1}}
    )
    mesh = sharding.make_mesh(jax.devices()[:1])
    step = jax.jit(lambda state, batch: state + batch["no_such_key"])
    abstract = jax.ShapeDtypeStruct((), jnp.float32)
    with pytest.raises(KeyError, match="no_such_key"):
        compilation.compile_step(step, abstract, config, mesh, init=SlowInit())
    raised_first = not compiled.is_set()
    release.set()
    assert raised_first


def test_build_step_compiles_with_the_step_options(monkeypatch):
    # A step built with options XLA rejects fails to compile, however it is compiled: so the
    # step's compiler options reach the step that tests and users call directly too.
    bogus = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"}
    monkeypatch.setattr(compilation, "step_compiler_options", lambda platform=None: dict(bogus))
    config = tiny_step_config()
    mesh = sharding.make_mesh(jax.devices()[:1])
    _, _, abstract, step = compilation.build(config, mesh)
    lowered = step.lower(abstract, compilation.batch_spec(config, mesh))
    with pytest.raises(jax.errors.JaxRuntimeError, match="NO_SUCH_TYPE"):
        lowered.compile()
    with pytest.raises(jax.errors.JaxRuntimeError, match="NO_SUCH_TYPE"):
        compilation.compile_step(step, abstract, config, mesh)
