"""The train programs: built (:func:`build`) and compiled ahead of time (:func:`compile_step`),
with the XLA compiler options of the platform it is compiled for (:func:`step_compiler_options`).

:func:`build` makes the sharded state initialiser and the jitted train step for a config on a
``(data, fsdp)`` mesh; :func:`compile_step` compiles both before any state exists, so the
compiler's memory is handed back to the OS before training allocates its own.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from hificodec_jax import factory
from hificodec_jax.training import host_memory, optim, sharding
from hificodec_jax.training.step import create_train_state, make_train_step

# ----------------------------------------------------------------------------------------------
# Building the programs
# ----------------------------------------------------------------------------------------------


def build(config: ml_collections.ConfigDict, mesh, steps_per_epoch: int | None = None):
    """``(codec, init, abstract, step)``: the sharded state initialiser, the state's shape/dtype
    structs carrying its shardings on ``mesh`` (what a checkpoint restores into), the jitted step.

    ``steps_per_epoch`` sets the learning-rate decay interval when ``optim.*.decay_steps`` is 0
    (:func:`hificodec_jax.training.optim.make_schedule`). The step carries
    :func:`step_compiler_options`, so it compiles with them whether it is called directly,
    lowered and compiled, or compiled by :func:`compile_step`.
    """
    codec = factory.build_codec(config)
    discs = factory.build_discriminators(config)
    tx_g, sched_g = optim.make_optimizer(config.optim.g, steps_per_epoch)
    tx_d, sched_d = optim.make_optimizer(config.optim.d, steps_per_epoch)
    seg = config.data.segment_size
    create = functools.partial(create_train_state, codec, discs, tx_g, tx_d, segment_size=seg)
    repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    shapes = jax.eval_shape(create, jax.random.key(0))
    state_sharding = sharding.state_shardings(shapes, mesh, config.mesh.fsdp_min_size)
    abstract = with_shardings(shapes, state_sharding)  # what a checkpoint restores into
    init = jax.jit(create, out_shardings=state_sharding)
    step = jax.jit(
        make_train_step(codec, discs, tx_g, tx_d, (sched_g, sched_d), config, mesh),
        in_shardings=(state_sharding, data),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
        # however the step gets compiled; for the mesh's chips, not this host's
        compiler_options=step_compiler_options(mesh_platform(mesh)) or None,
    )
    return codec, init, abstract, step


def with_shardings(abstract, shardings):
    """Shape/dtype structs carrying the shardings the state is restored into."""
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings
    )


def batch_spec(config: ml_collections.ConfigDict, mesh) -> dict:
    """Shape/dtype/sharding of one global training batch (what ``shard_batch`` produces)."""
    data = sharding.data_sharding(mesh)
    b, seg = config.batch_size, config.data.segment_size
    return {
        "wav": jax.ShapeDtypeStruct((b, seg), jnp.float32, sharding=data),
        "lengths": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data),
    }


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compilation
# ----------------------------------------------------------------------------------------------


def compile_step(
    step_fn, abstract, config: ml_collections.ConfigDict, mesh, init=None, timings=None
):
    """``(step, init)`` compiled ahead of time: the train step for ``abstract`` state and the
    config's batches, and the jitted state initialiser ``init`` (``None`` when not given, e.g.
    when resuming from a checkpoint).

    Compiling needs no state in memory; the compiler's freed memory is returned to the OS
    right after (``host_memory.release_freed_memory``). The two programs compile at the same
    time in two threads, since XLA compiles one program on fewer cores than a host has; the
    initialiser is traced first (it is quick) so that it compiles while the step is being
    traced instead of competing with the step's compile for the whole of it. Each program's
    compile wall time is logged and, when ``timings`` (a dict) is given, stored under
    ``"step"`` / ``"init"``. The step's compiler options come with it from :func:`build`.
    """

    def compile_timed(name, program):
        t = time.perf_counter()
        compiled = program.compile()
        seconds = time.perf_counter() - t
        logging.info("compiled the %s in %.1f s", name, seconds)
        return name, compiled, seconds

    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        futures = []
        if init is not None:
            futures.append(pool.submit(compile_timed, "init", init.lower(jax.random.key(0))))
        step_lowered = step_fn.lower(abstract, batch_spec(config, mesh))
        futures.append(pool.submit(compile_timed, "step", step_lowered))
        results = [f.result() for f in futures]
    finally:  # an error in the step raises now, not once the initialiser has compiled
        pool.shutdown(wait=False, cancel_futures=True)
    host_memory.release_freed_memory()
    if timings is not None:
        timings.update({name: seconds for name, _, seconds in results})
    compiled = {name: c for name, c, _ in results}
    return compiled["step"], compiled.get("init")


# ----------------------------------------------------------------------------------------------
# Compiler options
# ----------------------------------------------------------------------------------------------

# XLA CPU's default YNNPACK library fusions are {individual dot, individual convolution, reduce}
# (jaxlib 0.10); its 2-D convolution is slower than XLA's own on the MS-STFT discriminator's
# 3x9 convs (the others are 1-D), so the train step is compiled without YNNPACK convolutions
# on CPU (figures in docs/performance-notes.md).
_CPU_STEP_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def mesh_platform(mesh) -> str:
    """The platform of a mesh's devices ("cpu", "tpu", "cuda", ...), which may not be this
    host's (a mesh of compile-only TPU devices on a CPU host)."""
    return mesh.devices.flat[0].platform


def step_compiler_options(platform: str | None = None) -> dict:
    """XLA compiler options for the train step on ``platform``, the target's (default: JAX's
    default backend): ``{}`` off CPU, and ``{}`` where this XLA rejects them (an unknown option
    or enum value; warned once)."""
    if (platform or jax.default_backend()) != "cpu":
        return {}
    return dict(_accepted_options(tuple(sorted(_CPU_STEP_OPTIONS.items()))))


@functools.cache
def _accepted_options(options: tuple) -> tuple:
    """``options`` if this XLA CPU compiles a trivial program with them, else ``()``."""
    try:
        x = jax.device_put(jnp.zeros((), jnp.float32), jax.devices("cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=dict(options))(x)
    except jax.errors.JaxRuntimeError as e:
        logging.warning("compiling the train step without %s: %s", [k for k, _ in options], e)
        return ()
    return options
