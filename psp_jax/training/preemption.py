"""SIGTERM (the preemption notice of TPU VMs and batch schedulers) and Ctrl-C, as a flag the
train loop polls.

The loop finishes the step it is in, saves a checkpoint and returns. The first Ctrl-C
(SIGINT) does what SIGTERM does; a second one stops at once (KeyboardInterrupt, which
tools.cli turns into one line and exit status 130), losing the steps since the last
checkpoint. With several processes, all of them must save at the same step: JAX's
preemption sync point (set up by `jax.distributed.initialize`, which also catches the
SIGTERM) agrees on one; Ctrl-C there stops the process that gets it at once.
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
    self.signal_name = None  # 'SIGTERM' or 'SIGINT', once one has come
    self._previous = {}  # the handlers ours replaced, by signal
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      # The next Ctrl-C stops at once.
      signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))
      logging.warning('Ctrl-C: finishing the current step, then saving a checkpoint (press '
                      'Ctrl-C again to stop at once, losing the steps since the last one).')
    else:
      logging.warning('SIGTERM: finishing the current step, then saving a checkpoint.')
    self._notice.set()

  def reached(self, step: int) -> bool:
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notice.is_set()

  def close(self) -> None:
    """Gives the signals back their former handlers once the loop is over."""
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
