"""Orbax checkpoints of the train state together with the data iterator's position.

``<workdir>/checkpoints/<step>/{state, data_iter}``: the whole :class:`TrainState` (sharded
arrays are written collectively by every process) and the grain iterator state, so a resumed
run continues on exactly the next batch. Saves are asynchronous; orbax writes into a temporary
directory and renames it on success, so a crash mid-save leaves the previous checkpoint intact
and a half-written one is never picked up. Kept: the last ``keep`` checkpoints plus the best by
the eval metric (lower mel distance). A state containing NaN/inf is refused before saving.
orbax's own INFO lines are dropped unless absl's ``--verbosity`` is 1 or more.
"""

from __future__ import annotations

import logging as std_logging
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

EVAL_METRIC = "eval/mel_distance"


class _QuietOrbax(std_logging.Filter):
    """Drops orbax's INFO lines (dozens per save) unless absl's ``--verbosity`` is 1 or more."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno > std_logging.INFO or logging.get_verbosity() >= 1:
            return True
        return f"{os.sep}orbax{os.sep}" not in record.pathname


_QUIET_ORBAX = _QuietOrbax()


def quiet_orbax_logs() -> None:
    """Install the filter on absl's logger, through which orbax logs (idempotent)."""
    logger = logging.get_absl_logger()
    if _QUIET_ORBAX not in logger.filters:
        logger.addFilter(_QUIET_ORBAX)


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read back (truncated, damaged or foreign files)."""


def _data_iter_args(save: bool, iterator):
    import grain

    if save:
        return grain.checkpoint.CheckpointSave(iterator)
    return grain.checkpoint.CheckpointRestore(iterator)


def _eval_metric(metrics) -> float:
    """Sort key for BestN; a checkpoint without the metric ranks worst (never "best")."""
    value = (metrics or {}).get(EVAL_METRIC)
    return float("inf") if value is None else float(value)


class Checkpointer:
    """Save/restore ``(state, data iterator)``; a thin wrapper over ``ocp.CheckpointManager``."""

    def __init__(
        self, directory: str, *, keep: int = 3, save_every: int = 5000, async_: bool = True
    ):
        self.directory = os.path.abspath(directory) if "://" not in directory else directory
        quiet_orbax_logs()
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(keep),
                # Checkpoints saved between evals carry no metric: they are kept by LatestN
                # only (orbax would otherwise keep every one of them forever).
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=_eval_metric,
                    reverse=True,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every,
            preservation_policy=policy,
            enable_async_checkpointing=async_,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data_iter"), options=options
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self, step: int, state, data_iter=None, *, metrics: dict | None = None, force: bool = False
    ) -> bool:
        """Save if ``step`` is due (or ``force``). Non-finite params are never written."""
        if not (force or self.manager.should_save(step)):
            return False
        if not bool(_all_finite(state)):
            logging.error("step %d: state has non-finite values; checkpoint not written", step)
            return False
        args = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            args["data_iter"] = _data_iter_args(True, data_iter)
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        return self.manager.save(
            step, args=ocp.args.Composite(**args), metrics=metrics, force=force
        )

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """Restore into ``abstract_state``'s structure and shardings (and the iterator in place)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        args = {"state": ocp.args.StandardRestore(abstract)}
        if data_iter is not None:
            args["data_iter"] = _data_iter_args(False, data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            path = os.path.join(self.directory, str(step))
            raise CheckpointError(
                f"checkpoint at step {step} ({path}) cannot be restored: {type(e).__name__}: "
                f"{str(e)[:500]}. Restore an earlier step (restore(..., step=N); kept: "
                f"{self.manager.all_steps()}) or move this directory away."
            ) from e
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


@jax.jit
def _all_finite(tree) -> jax.Array:
    """One global boolean (works on sharded, multi-process arrays)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
