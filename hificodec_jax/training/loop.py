"""``train_and_evaluate(config, workdir)``: the GAN training loop.

Sharded over every device of every process: a ``(data, fsdp)`` mesh, batches split over all
devices, the train state replicated (``config.mesh.fsdp == 1``, the default: data parallel) or
split FSDP-style (``fsdp > 1``), and created already sharded (``eval_shape`` -> shardings ->
``jit(create, out_shardings)``). Checkpoints (state + data iterator) and TensorBoard events
live in ``workdir``; a restart resumes from the latest checkpoint on the exact next batch, and
a run whose checkpoint is already at ``total_steps`` does nothing. ``config.init_from`` starts
from a trained model's generator and codebooks (:mod:`~hificodec_jax.training.finetune`).

The pieces live next door: data sources in :mod:`hificodec_jax.data.sources`, the programs and
their ahead-of-time compile in :mod:`~hificodec_jax.training.compilation`, held-out evaluation
in :mod:`~hificodec_jax.training.evaluate`.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging
from etils import epath

from hificodec_jax.data import input_pipeline
from hificodec_jax.data.sources import make_sources, steps_per_epoch
from hificodec_jax.model_dir import save_model
from hificodec_jax.reference import resume as reference_resume
from hificodec_jax.training import evaluate, finetune, host_memory, optim, sharding
from hificodec_jax.training.checkpoint import Checkpointer
from hificodec_jax.training.compilation import build, compile_step
from hificodec_jax.training.metric_writer import MetricWriter, Progress
from hificodec_jax.training.preemption import PreemptionWatcher
from hificodec_jax.training.step import TrainState


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Train ``config`` for ``config.total_steps`` steps, resuming from ``workdir`` if possible.

    Returns the final state; its ``step`` is below ``total_steps`` when the run was preempted
    (SIGTERM): a checkpoint of that step was written and rerunning resumes from it. Ends with
    one line: steps done, final losses, where the export and the TensorBoard logs are.
    """
    # ------------------------------------------------------------------------------------------
    # Workdir, mesh, a finished job
    # ------------------------------------------------------------------------------------------
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local path or gs://...
    if not jax.config.jax_compilation_cache_dir:  # restarts don't recompile (env var wins)
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    mesh = sharding.make_mesh(fsdp=config.mesh.fsdp)
    n_proc = jax.process_count()
    if config.batch_size % jax.device_count():
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by the {jax.device_count()} devices"
        )

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        save_every=config.checkpoint_every,
    )
    latest = ckpt.latest_step()
    if latest is not None and latest >= config.total_steps:
        return _finished(config, workdir, mesh, ckpt, latest)

    # ------------------------------------------------------------------------------------------
    # Input pipeline, epoch length
    # ------------------------------------------------------------------------------------------
    train_src, eval_src = make_sources(config, workdir)
    epoch = steps_per_epoch(len(train_src), config.batch_size)
    _log_schedule(config, len(train_src), epoch)
    bad_items = input_pipeline.BadItems()  # train and held-out files, counted together
    train_ds = input_pipeline.make_train_dataset(
        train_src,
        bad_items=bad_items,
        segment_size=config.data.segment_size,
        batch_size=config.batch_size // n_proc,
        seed=config.seed,
    )
    train_iter = iter(train_ds)

    # ------------------------------------------------------------------------------------------
    # Model and train step: compiled, then the state initialised or restored
    # ------------------------------------------------------------------------------------------
    codec, init, abstract, step_fn = build(config, mesh, epoch)
    # Compiling the step (and the initialiser) before the state exists lets the compiler's
    # freed memory go back to the OS first: the peak RSS is then that of training alone.
    resume = latest is not None
    step_fn, init = compile_step(step_fn, abstract, config, mesh, init=None if resume else init)
    if resume:
        state = ckpt.restore(abstract, train_iter)
        logging.info("resumed from step %d", int(state.step))
    else:
        state = init(jax.random.key(config.seed))
        if config.get("init_from"):
            state = finetune.init_from_model(state, config)
        if config.get("resume_reference"):
            state = reference_resume.resume_from_reference(state, config)
    host_memory.release_freed_memory()

    # ------------------------------------------------------------------------------------------
    # Evaluation and logging
    # ------------------------------------------------------------------------------------------
    writer = MetricWriter(os.path.join(workdir, "tensorboard"))
    eval_step = jax.jit(
        evaluate.make_eval_step(codec, config), out_shardings=sharding.replicated(mesh)
    )
    sr = config.audio.sample_rate

    def run_eval(state, step: int) -> dict:
        eval_ds = input_pipeline.make_eval_dataset(
            eval_src, max_seconds=config.data.eval_seconds, hop=codec.hop, bad_items=bad_items
        )
        metrics = evaluate.evaluate(
            eval_step,
            state.g_params,
            state.vq,
            eval_ds,
            writer,
            step,
            sr,
            mesh,
            config.model.quantizer.num_groups,
        )
        logging.info("eval at step %d: %s", step, metrics)
        return metrics

    if config.get("init_from") and not resume:
        run_eval(state, 0)  # the starting model's own held-out score
    progress = Progress(
        config.total_steps, config.batch_size * config.data.segment_size / sr, int(state.step)
    )

    # ------------------------------------------------------------------------------------------
    # Train loop
    # ------------------------------------------------------------------------------------------
    step = int(state.step)
    last_metrics: dict = {}
    with PreemptionWatcher() as preemption:
        while step < config.total_steps:
            batch = sharding.shard_batch(next(train_iter), mesh)
            state, metrics = step_fn(state, batch)
            step += 1
            if step % config.log_every == 0 or step == config.total_steps:
                metrics = jax.device_get(metrics)
                metrics.update(progress.report(step, metrics))
                metrics.update(bad_items.metrics())
                writer.scalars(step, metrics)
                last_metrics = metrics
            eval_metrics = None
            if step % config.eval_every == 0 or step == config.total_steps:
                eval_metrics = run_eval(state, step)
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

    # ------------------------------------------------------------------------------------------
    # Export
    # ------------------------------------------------------------------------------------------
    export(config, state, os.path.join(workdir, "export"))
    losses = " ".join(
        f"{k.split('/', 1)[1]}={float(last_metrics[k]):.4g}"
        for k in ("loss/g_total", "loss/d_total", "loss/mel")
        if k in last_metrics
    )
    logging.info(
        "done: %d steps, final %s; model exported to %s; TensorBoard logs: tensorboard --logdir %s",
        step,
        losses,
        os.path.join(workdir, "export"),
        os.path.join(workdir, "tensorboard"),
    )
    return state


def _log_schedule(config: ml_collections.ConfigDict, num_clips: int, epoch: int) -> None:
    """Log the epoch length and each optimizer's learning-rate decay interval."""
    g, d = (optim.decay_interval(c, epoch) for c in (config.optim.g, config.optim.d))
    logging.info(
        "epoch: %d training clips // batch %d = %d steps; learning rate x%g every %d (G) / "
        "%d (D) steps",
        num_clips,
        config.batch_size,
        epoch,
        config.optim.g.lr_decay,
        g,
        d,
    )


def _finished(config, workdir: str, mesh, ckpt: Checkpointer, latest: int) -> TrainState:
    """A job whose checkpoint is at ``total_steps``: nothing to train or compile; exports the
    generator if a crash left no export, and returns the checkpoint's state."""
    _, _, abstract, _ = build(config, mesh)
    state = ckpt.restore(abstract)
    ckpt.close()
    directory = os.path.join(workdir, "export")
    if not epath.Path(directory).exists():
        export(config, state, directory)
    logging.info(
        "already at step %d (total_steps %d): nothing to do (to train longer, run the same "
        "command with a larger --config.total_steps); model in %s, TensorBoard logs: "
        "tensorboard --logdir %s",
        latest,
        config.total_steps,
        directory,
        os.path.join(workdir, "tensorboard"),
    )
    return state


def export(config: ml_collections.ConfigDict, state: TrainState, directory: str) -> None:
    """Write the generator (params + codebooks) as a model directory that
    ``hificodec_jax.load(directory)`` reads. Gathering a sharded state is collective (every
    process calls this); process 0 writes."""
    variables = sharding.to_host({"params": state.g_params, "vq": state.vq})
    if jax.process_index() == 0:
        if not variables["vq"]:
            del variables["vq"]
        save_model(directory, config, variables, source="train", overwrite=True)
