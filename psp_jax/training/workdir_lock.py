"""One training run per workdir: a lock file taken before anything is written there.

Two runs on one workdir overwrite and prune each other's checkpoints. `WORKDIR/LOCK` holds
the holder's host, process id and start time, and the time it was last refreshed (every
REFRESH_SECONDS by a thread of the run). A second run refuses to start, naming the holder.
A lock is stale, and taken over with a warning, when its process is gone (same host) or
it was not refreshed for STALE_SECONDS (any host: a run on a lost machine). With several
processes (pod slices), process 0 holds the lock of the shared workdir for all of them.
"""

import contextlib
import datetime
import json
import os
import socket
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from psp_jax.base import errors

LOCK_FILE = 'LOCK'
REFRESH_SECONDS = 60
STALE_SECONDS = 600
UNREADABLE_WAIT_SECONDS = 1


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: it exists
    return True
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def stale_reason(holder: dict | None, now: float | None = None) -> str | None:
  """Why the lock of `holder` may be taken over, or None while its run may be alive."""
  if holder is None:
    return 'unreadable'
  now = time.time() if now is None else now
  if holder.get('host') == socket.gethostname() and not _alive(int(holder.get('pid', -1))):
    return f'process {holder.get("pid")} is gone'
  if now - float(holder.get('refreshed_unix', 0)) > STALE_SECONDS:
    return f'not refreshed for more than {STALE_SECONDS} s'
  return None


class WorkdirLock:
  """Holds WORKDIR/LOCK from `acquire()` to `release()`; a context manager."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._record = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': _now()}
    self._stop = threading.Event()
    self._thread = None

  def _write(self, exclusive: bool) -> bool:
    """Writes the record to LOCK, whole: another run never reads it half-written. With
    `exclusive`, only if there is no LOCK (False if there is)."""
    self._record['refreshed_unix'] = time.time()
    temporary = f'{self.path}.{os.getpid()}'
    with open(temporary, 'wb') as f:
      f.write(json.dumps(self._record).encode())
    if not exclusive:
      os.replace(temporary, self.path)
      return True
    try:
      os.link(temporary, self.path)  # fails if LOCK exists, like O_EXCL, but never empty
    except FileExistsError:
      return False
    except OSError:  # a filesystem without hard links: O_EXCL, then the bytes
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, 'wb') as f, open(temporary, 'rb') as record:
        f.write(record.read())
    finally:
      os.remove(temporary)
    return True

  def _ours(self) -> bool:
    holder = _read(self.path)
    return bool(holder) and all(holder.get(k) == self._record[k]
                                for k in ('host', 'pid', 'started'))

  def acquire(self) -> None:
    """Takes the lock, or raises errors.InputError naming the run that holds it."""
    if not self._write(exclusive=True):
      holder = _read(self.path)
      if holder is None:  # written this moment, without hard links: read it once more
        time.sleep(UNREADABLE_WAIT_SECONDS)
        holder = _read(self.path)
      reason = stale_reason(holder)
      if reason is None:
        raise errors.InputError(
            f'{os.path.dirname(self.path)} is in use by another training run: process '
            f'{holder["pid"]} on {holder["host"]}, started {holder["started"]} ({self.path}). '
            'Wait for it or stop it, or train in another --workdir.')
      logging.warning('Taking over the stale lock %s (%s; it was held by process %s on %s, '
                      'started %s).', self.path, reason, (holder or {}).get('pid'),
                      (holder or {}).get('host'), (holder or {}).get('started'))
      if not self._set_aside(holder) or not self._write(exclusive=True):
        holder = _read(self.path) or {}
        raise errors.InputError(
            f'{os.path.dirname(self.path)} was just taken by another training run: process '
            f'{holder.get("pid")} on {holder.get("host")} ({self.path}).')
    self._thread = threading.Thread(target=self._refresh, daemon=True, name='workdir-lock')
    self._thread.start()

  def _set_aside(self, stale: dict | None) -> bool:
    """Removes the stale LOCK of `stale`; False if another run has taken it over meanwhile.
    The rename is atomic: of two runs taking over at once, one moves the stale lock, and
    the other either finds none or moves the first's new one, which it puts back."""
    aside = f'{self.path}.stale.{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return True  # removed by a run that then exited, or being replaced: _write decides
    moved = _read(aside)
    if moved != stale:
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      except OSError:  # no hard links: renamed back unless a third run has taken it
        if not os.path.exists(self.path):
          os.rename(aside, self.path)
          return False
      os.remove(aside)
      return False
    os.remove(aside)
    return True

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_SECONDS):
      if self._ours():
        self._write(exclusive=False)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._ours():
      os.remove(self.path)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def hold(workdir: str):
  """The run's hold on `workdir`: process 0 takes the lock; every process learns whether it
  did, so that all of them stop (each with an error) when another run holds the workdir."""
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  refused = None
  if lock is not None:
    try:
      lock.acquire()
    except errors.InputError as error:
      refused = error
  if jax.process_count() > 1:
    held = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
    if not held and refused is None:
      refused = errors.InputError(f'{workdir} is in use by another training run (process 0 '
                                  'could not take its lock; its log names the holder).')
  if refused is not None:
    raise refused
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
