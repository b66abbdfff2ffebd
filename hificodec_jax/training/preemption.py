"""Stop training cleanly on SIGTERM (spot / preemptible VMs, SLURM ``--signal``, ``kill``).

Single process: a SIGTERM handler sets a flag that the loop reads at the next step boundary.
Several processes: JAX's preemption service (started by ``jax.distributed.initialize``) hears
the notice on any process and agrees on one step at which *every* process stops, so the final
checkpoint is written collectively at the same step everywhere.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging

# Exit status of a run stopped by preemption (128 + SIGTERM, what schedulers expect).
PREEMPTED_EXIT_CODE = 143


class PreemptionWatcher:
    """``should_stop(step)`` is True once a stop was requested (the same step on all processes).

    Use as a context manager; the previous signal handler is restored on exit.
    """

    def __init__(self, signals=(signal.SIGTERM,)):
        self.requested = False
        self._signals = signals
        self._previous: dict = {}
        self._multi = jax.process_count() > 1

    def _handler(self, signum, frame):
        del frame
        if not self.requested:
            logging.warning("received signal %d: stopping at the next step", signum)
        self.requested = True

    def __enter__(self):
        if not self._multi and threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        return False

    def should_stop(self, step: int) -> bool:
        """Call once per step, with the same step ids on every process."""
        if self._multi:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.requested = True
        return self.requested
