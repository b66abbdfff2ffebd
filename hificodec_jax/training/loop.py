"""``train_and_evaluate(config, workdir)``: the GAN training loop.

Sharded over every device of every process: a ``(data, fsdp)`` mesh, batches split over all
devices, the train state replicated (``config.mesh.fsdp == 1``, the default: data parallel) or
split FSDP-style (``fsdp > 1``), and created already sharded (``eval_shape`` -> shardings ->
``jit(create, out_shardings)``). Checkpoints (state + data iterator) and TensorBoard events
live in ``workdir``; a restart resumes from the latest checkpoint on the exact next batch.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from hificodec_jax import factory
from hificodec_jax.audio.spectral import mel_spectrogram
from hificodec_jax.data import input_pipeline
from hificodec_jax.models.quantizer import codebook_perplexity
from hificodec_jax.training import host_memory, losses, optim, sharding
from hificodec_jax.training.checkpoint import EVAL_METRIC, Checkpointer
from hificodec_jax.training.metric_writer import MetricWriter, Progress
from hificodec_jax.training.preemption import PreemptionWatcher
from hificodec_jax.training.step import TrainState, create_train_state, make_train_step

# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def make_sources(config: ml_collections.ConfigDict, workdir: str):
    """(train source, held-out source) from ``config.data``; the demo corpus when unset."""
    from hificodec_jax.audio.audio_io import list_audio_files  # noqa: PLC0415
    from hificodec_jax.data import input_pipeline  # noqa: PLC0415  (grain/tfds only when training)

    sr = config.audio.sample_rate
    if config.data.tfds_dir:
        return (
            input_pipeline.ArrayRecordAudioSource(config.data.tfds_dir, "train", sr),
            input_pipeline.ArrayRecordAudioSource(config.data.tfds_dir, "validation", sr),
        )
    directory = config.data.dir
    if not directory:
        from hificodec_jax.data.demo_corpus import ensure_demo_corpus  # noqa: PLC0415

        directory = ensure_demo_corpus(os.path.join(workdir, "demo_corpus"), sr)
        logging.info("no dataset configured: training on the built-in demo corpus %s", directory)
    train_files, eval_files = input_pipeline.split_files(list_audio_files(directory))
    return (
        input_pipeline.AudioFileSource(train_files, sr),
        input_pipeline.AudioFileSource(eval_files, sr),
    )


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def make_eval_step(codec, config):
    """``(params, vq, wav [B, T], lengths) -> (mel L1 sum, frames, code counts, wav_hat)``."""
    sr = config.audio.sample_rate
    n_fft, hop, win, _ = losses.reference_mel_resolutions(sr)[0]  # the reference's mel1024

    def mel(x):
        return mel_spectrogram(
            x, sample_rate=sr, n_fft=n_fft, num_mels=80, hop_size=hop, win_size=win
        )

    def step(params, vq, wav, lengths):
        out = codec.apply({"params": params, "vq": vq}, wav, lengths)
        target = wav[:, : out.wav_hat.shape[1]]
        m, m_hat = mel(target), mel(out.wav_hat)  # [B, frames, 80]
        valid = (jnp.arange(m.shape[1])[None, :] * hop < lengths[:, None]).astype(m.dtype)
        l1 = jnp.sum(jnp.mean(jnp.abs(m - m_hat), axis=-1) * valid)
        return l1, jnp.sum(valid), out.stats.counts, out.wav_hat, m, m_hat

    return step


def evaluate(eval_step, state: TrainState, eval_batches, writer, step: int, sample_rate: int, mesh):
    """Mel distance (reference mel1024 L1 over valid frames) and codebook usage on held-out data.

    Every process evaluates every clip; the batches enter as arrays replicated over ``mesh``.
    """
    l1_sum = frames = 0.0
    counts = None
    first = None
    for batch in eval_batches:
        batch = sharding.replicate_batch(batch, mesh)
        l1, n, c, wav_hat, m, m_hat = eval_step(
            state.g_params, state.vq, batch["wav"], batch["lengths"]
        )
        l1_sum, frames = l1_sum + float(l1), frames + float(n)
        counts = np.asarray(c) if counts is None else counts + np.asarray(c)
        if first is None:
            first = tuple(np.asarray(x)[0] for x in (batch["wav"], wav_hat, m, m_hat))
    if counts is None:
        return {}
    ppl = codebook_perplexity(counts)
    metrics = {
        EVAL_METRIC: l1_sum / max(frames, 1.0),
        "eval/dead_codes": float((counts == 0).sum()),
    }
    metrics.update({f"eval/perplexity_{i}": float(v) for i, v in enumerate(ppl)})
    writer.scalars(step, metrics)
    wav, wav_hat, m, m_hat = first
    writer.audio(step, "eval/reconstruction", wav_hat, sample_rate)
    writer.audio(step, "eval/original", wav, sample_rate)
    writer.mel_image(step, "eval/mel_reconstruction", np.asarray(m_hat))
    writer.mel_image(step, "eval/mel_original", np.asarray(m))
    return metrics


# ----------------------------------------------------------------------------------------------
# Train loop
# ----------------------------------------------------------------------------------------------


def build(config: ml_collections.ConfigDict, mesh):
    """``(codec, init, abstract, step)``: the sharded state initialiser, the state's shape/dtype
    structs carrying its shardings on ``mesh`` (what a checkpoint restores into), the jitted step.

    The step carries :func:`step_compiler_options`, so it compiles with them whether it is
    called directly, lowered and compiled, or compiled by :func:`compile_step`.
    """
    codec = factory.build_codec(config)
    discs = factory.build_discriminators(config)
    tx_g, sched_g = optim.make_optimizer(config.optim.g)
    tx_d, sched_d = optim.make_optimizer(config.optim.d)
    seg = config.data.segment_size
    create = functools.partial(create_train_state, codec, discs, tx_g, tx_d, segment_size=seg)
    repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    shapes = jax.eval_shape(create, jax.random.key(0))
    state_sharding = sharding.state_shardings(shapes, mesh, config.mesh.fsdp_min_size)
    abstract = with_shardings(shapes, state_sharding)  # what a checkpoint restores into
    init = jax.jit(create, out_shardings=state_sharding)
    step = jax.jit(
        make_train_step(codec, discs, tx_g, tx_d, (sched_g, sched_d), config),
        in_shardings=(state_sharding, data),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
        compiler_options=step_compiler_options() or None,  # however the step gets compiled
    )
    return codec, init, abstract, step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Train ``config`` for ``config.total_steps`` steps, resuming from ``workdir`` if possible.

    Returns the final state; its ``step`` is below ``total_steps`` when the run was preempted
    (SIGTERM): a checkpoint of that step was written and rerunning resumes from it.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local path or gs://...
    if not jax.config.jax_compilation_cache_dir:  # restarts don't recompile (env var wins)
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    mesh = sharding.make_mesh(fsdp=config.mesh.fsdp)
    n_proc = jax.process_count()
    if config.batch_size % jax.device_count():
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by the {jax.device_count()} devices"
        )
    codec, init, abstract, step_fn = build(config, mesh)
    train_src, eval_src = make_sources(config, workdir)
    train_ds = input_pipeline.make_train_dataset(
        train_src,
        segment_size=config.data.segment_size,
        batch_size=config.batch_size // n_proc,
        seed=config.seed,
    )
    train_iter = iter(train_ds)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        save_every=config.checkpoint_every,
    )
    # Compile the step (and the initialiser) before the state exists, then hand the compiler's
    # freed memory back to the OS (host_memory): the process's peak RSS is then that of
    # training, not of the compiler plus training (about 6 instead of 8 GiB for
    # configs/grvq4.py at batch 4 x 1 s on CPU).
    resume = ckpt.latest_step() is not None
    step_fn, init = compile_step(step_fn, abstract, config, mesh, init=None if resume else init)
    if resume:
        state = ckpt.restore(abstract, train_iter)
        logging.info("resumed from step %d", int(state.step))
    else:
        state = init(jax.random.key(config.seed))
    host_memory.release_freed_memory()
    writer = MetricWriter(os.path.join(workdir, "tensorboard"))
    repl = sharding.replicated(mesh)
    eval_step = jax.jit(make_eval_step(codec, config), out_shardings=repl)
    sr = config.audio.sample_rate
    progress = Progress(
        config.total_steps, config.batch_size * config.data.segment_size / sr, int(state.step)
    )
    step = int(state.step)
    with PreemptionWatcher() as preemption:
        while step < config.total_steps:
            batch = sharding.shard_batch(next(train_iter), mesh)
            state, metrics = step_fn(state, batch)
            step += 1
            if step % config.log_every == 0 or step == config.total_steps:
                metrics = jax.device_get(metrics)
                metrics.update(progress.report(step, metrics))
                metrics.update(input_pipeline.bad_file_metrics())
                writer.scalars(step, metrics)
            eval_metrics = None
            if step % config.eval_every == 0 or step == config.total_steps:
                eval_ds = input_pipeline.make_eval_dataset(
                    eval_src, max_seconds=config.data.eval_seconds, hop=codec.hop
                )
                eval_metrics = evaluate(eval_step, state, eval_ds, writer, step, sr, mesh)
                logging.info("eval at step %d: %s", step, eval_metrics)
            preempted = preemption.should_stop(step)
            ckpt.save(
                step,
                state,
                train_iter,
                metrics=eval_metrics,
                force=step == config.total_steps or preempted,
            )
            if preempted:
                logging.warning(
                    "preempted: stopped after step %d with a checkpoint; rerun to resume", step
                )
                break
    ckpt.close()
    writer.close()
    if step < config.total_steps:
        return state
    # Generator-only export, loadable with hificodec_jax.load(workdir/"export"). Gathering a
    # sharded state is collective (every process); process 0 writes.
    variables = sharding.to_host({"params": state.g_params, "vq": state.vq})
    if jax.process_index() == 0:
        from hificodec_jax.codec.model_io import save_model  # noqa: PLC0415

        if not variables["vq"]:
            del variables["vq"]
        save_model(
            os.path.join(workdir, "export"), config, variables, source="train", overwrite=True
        )
    return state


def batch_spec(config: ml_collections.ConfigDict, mesh) -> dict:
    """Shape/dtype/sharding of one global training batch (what ``shard_batch`` produces)."""
    data = sharding.data_sharding(mesh)
    b, seg = config.batch_size, config.data.segment_size
    return {
        "wav": jax.ShapeDtypeStruct((b, seg), jnp.float32, sharding=data),
        "lengths": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data),
    }


def compile_step(
    step_fn, abstract, config: ml_collections.ConfigDict, mesh, init=None, timings=None
):
    """``(step, init)`` compiled ahead of time: the train step for ``abstract`` state and the
    config's batches, and the jitted state initialiser ``init`` (``None`` when not given, e.g.
    when resuming from a checkpoint).

    Compiling needs no state in memory; the compiler's freed memory is returned to the OS
    right after (``host_memory.release_freed_memory``). The two programs compile at the same
    time in two threads: XLA compiles one program on about 1.5 cores (``configs/grvq4.py`` on
    2 CPU cores of an AVX-512 Xeon: 120 s step + 93 s init one after the other, 148-155 s
    together). The initialiser is traced (1 s) and starts compiling first, so that it
    compiles while the step is being traced (25-35 s of Python on one core) rather than
    competing with the step's compile for the whole of it. Each program's compile wall time
    is logged and, when ``timings`` (a dict) is given, stored under ``"step"`` / ``"init"``.
    The step's compiler options come with it from :func:`build`.
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


# XLA CPU's default YNNPACK library fusions are {individual dot, individual convolution, reduce}
# (jaxlib 0.10). Its YNNPACK 2-D convolution is slower than XLA's own (Eigen) convolution on
# the MS-STFT discriminator's 32-channel 3x9 convs: their forward + backward on real + fake,
# batch 4 x 1 s, took 2.39 s with it and 1.74 s without it on an AVX-512 Xeon of the 2-core
# CI machine class, and 14.5 s against 2.9 s (5x) on an AVX2 AMD EPYC of the same class
# (MPD, MSD and the generator use 1-D convs, which it does not take); the whole
# configs/grvq4.py step gained 15.81 s against 16.04 s on the Xeon (medians of six
# interleaved rounds). So the train step is compiled without YNNPACK convolutions on CPU.
_CPU_STEP_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def step_compiler_options() -> dict:
    """XLA compiler options for the train step on this backend: ``{}`` off CPU, and ``{}``
    where this XLA rejects them (an unknown option or enum value; warned once)."""
    if jax.default_backend() != "cpu":
        return {}
    return dict(_accepted_options(tuple(sorted(_CPU_STEP_OPTIONS.items()))))


@functools.cache
def _accepted_options(options: tuple) -> tuple:
    """``options`` if this XLA compiles a trivial program with them, else ``()``."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options))(jnp.zeros((), jnp.float32))
    except jax.errors.JaxRuntimeError as e:
        logging.warning("compiling the train step without %s: %s", [k for k, _ in options], e)
        return ()
    return options


def with_shardings(abstract, shardings):
    """Shape/dtype structs carrying the shardings the state is restored into."""
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings
    )
