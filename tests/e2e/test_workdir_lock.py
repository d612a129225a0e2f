"""One run per workdir: a second train.py refuses in one line naming the holder; stale locks
(process gone, or not refreshed) are taken over; on several processes, process 0 holds it."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from psp_jax.base import errors
from psp_jax.training import workdir_lock
from test_multiprocess import log, start_two_processes
from test_preemption import ROOT, command


def _write_lock(workdir, **fields):
  record = dict(host=socket.gethostname(), pid=os.getpid(), started='2026-12-06T00:00:00+00:00',
                refreshed_unix=time.time())
  record.update(fields)
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(record))
  return record


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_a_second_lock_is_refused_naming_the_holder_until_released(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  holder = json.loads((tmp_path / 'LOCK').read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  with pytest.raises(errors.InputError, match=re.escape(
      f'{tmp_path} is in use by another training run: process {os.getpid()} on '
      f'{socket.gethostname()}, started {holder["started"]} ({tmp_path / "LOCK"}). Wait for '
      'it or stop it, or train in another --workdir.')):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  assert not (tmp_path / 'LOCK').exists()
  with workdir_lock.WorkdirLock(str(tmp_path)):
    assert (tmp_path / 'LOCK').exists()
  assert not (tmp_path / 'LOCK').exists()


_RACE = """
import os, sys, time
from psp_jax.base import errors
from psp_jax.training import workdir_lock
workdir, start, release = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lock = workdir_lock.WorkdirLock(workdir)
time.sleep(max(0.0, start - time.time() - 0.05))
while time.time() < start:
  pass
try:
  lock.acquire()
  print('took it', flush=True)
  deadline = time.time() + 120
  while not os.path.exists(release) and time.time() < deadline:  # held while others try
    time.sleep(0.05)
except errors.InputError:
  print('refused', flush=True)
"""


@pytest.mark.parametrize('before', ['no_lock', 'stale_lock'])
def test_of_runs_started_at_the_same_moment_exactly_one_takes_the_lock(tmp_path, before):
  """Each process spins until the same instant, then takes the lock: a lock file seen
  before its holder wrote it must not pass for a stale one, and of the runs that find a
  stale lock, one takes it over."""
  if before == 'stale_lock':
    _write_lock(tmp_path, pid=_dead_pid())
  start = time.time() + 10  # after every process has imported psp_jax
  release = tmp_path / 'release'  # the holders hold until all the others have tried
  processes = [subprocess.Popen([sys.executable, '-c', _RACE, str(tmp_path), str(start),
                                 str(release)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(6)]
  deadline = time.time() + 90
  while sum(p.poll() is not None for p in processes) < 5 and time.time() < deadline:
    time.sleep(0.1)
  release.touch()
  outcomes = [p.communicate(timeout=150)[0].strip() for p in processes]
  assert sorted(outcomes) == ['refused'] * 5 + ['took it'], outcomes


@pytest.mark.parametrize('stale', ['process_gone', 'not_refreshed'])
def test_a_stale_lock_is_taken_over(tmp_path, stale):
  if stale == 'process_gone':
    _write_lock(tmp_path, pid=_dead_pid())
  else:  # another host's run that stopped refreshing: its machine is gone
    _write_lock(tmp_path, host='lost-host', pid=1,
                refreshed_unix=time.time() - workdir_lock.STALE_SECONDS - 1)
  assert workdir_lock.stale_reason(json.loads((tmp_path / 'LOCK').read_text()))
  with workdir_lock.WorkdirLock(str(tmp_path)):
    assert json.loads((tmp_path / 'LOCK').read_text())['pid'] == os.getpid()


def test_a_live_lock_of_another_host_is_not_stale(tmp_path):
  holder = _write_lock(tmp_path, host='other-host', pid=1)
  assert workdir_lock.stale_reason(holder) is None


def test_a_second_train_py_on_a_running_workdir_exits_2_naming_the_first(tmp_path):
  data_dir, workdir = str(tmp_path / 'tfds'), str(tmp_path / 'workdir')
  first = subprocess.Popen(command(workdir, data_dir, '--config.num_train_steps=1000',
                                   '--config.checkpoint_every_steps=500'),
                           cwd=ROOT, stderr=subprocess.PIPE, text=True)
  try:
    for line in first.stderr:
      if 'step 1/1000' in line:
        break
    second = subprocess.run(command(workdir, data_dir), cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip().splitlines()[-1].startswith(
        f'error: {workdir} is in use by another training run: process {first.pid} on '
        f'{socket.gethostname()}, started ')
    assert 'Traceback' not in second.stderr
  finally:
    first.terminate()
    first.communicate(timeout=300)
  assert first.returncode == 0
  assert not os.path.exists(os.path.join(workdir, 'LOCK'))  # released on the way out


def test_on_two_processes_process_0_holds_the_lock_and_both_stop(tmp_path):
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  holder = _write_lock(workdir)  # this test process: alive, on this host
  processes = start_two_processes(
      'train.py', '--config=tests/tiny_config.py', f'--workdir={workdir}',
      f'--config.dataset.data_dir={tmp_path / "tfds"}', '--config.batch_size=4')
  for process in processes:
    process.wait(timeout=600)
  logs = [log(p) for p in processes]
  assert [p.returncode for p in processes] == [2, 2], logs
  assert logs[0].strip().splitlines()[-1].startswith(
      f'error: {workdir} is in use by another training run: process {holder["pid"]} on')
  assert logs[1].strip().splitlines()[-1] == (
      f'error: {workdir} is in use by another training run (process 0 could not take its '
      'lock; its log names the holder).')
  assert json.loads((workdir / 'LOCK').read_text()) == holder  # untouched
