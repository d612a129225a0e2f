"""SIGTERM, the preemption notice of TPU VMs and batch schedulers, as a flag the train loop polls.

The loop finishes the step it is in, saves a checkpoint and returns. With several
processes, all of them must save at the same step: JAX's preemption sync point (set
up by `jax.distributed.initialize`, which also catches the SIGTERM) agrees on one.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatch:
  """`reached(step)` is True at the step where every process should save and stop."""

  def __init__(self):
    self._multiprocess = jax.process_count() > 1
    self._notice = threading.Event()
    self._previous = None  # the SIGTERM handler ours replaced, when we installed one
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: finishing the current step, then saving a checkpoint.')
    self._notice.set()

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notice.is_set()

  def close(self) -> None:
    """Gives SIGTERM back its former handler (terminate, in train.py) once the loop is over."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
