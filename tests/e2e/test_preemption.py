"""train.py under SIGTERM and kill -9, resumed bit-exactly; same seed, same losses; NaN stops it.

These drive the real `train.py` in a subprocess on the embedded default (tests/tiny_config.py,
4 simulated CPU devices), and compare per-step losses from TensorBoard with an
uninterrupted run of the same command.
"""

import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_config
from checkpoint_damage import damage
from train_losses import losses
from psp_jax import build_model
from psp_jax.training import checkpoint, optimizer, train_loop, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 12


def command(workdir, data_dir, *overrides):
  return [sys.executable, 'train.py', '--config=tests/tiny_config.py', f'--workdir={workdir}',
          f'--config.dataset.data_dir={data_dir}', f'--config.num_train_steps={STEPS}',
          '--config.eval_every_steps=0', '--config.num_preview_images=0', *overrides]


def run(workdir, data_dir, *overrides):
  result = subprocess.run(command(workdir, data_dir, *overrides), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def assert_same_losses(workdir, reference, steps=STEPS):
  got = losses(workdir)
  assert sorted(got) == list(range(1, steps + 1))
  for step, values in got.items():  # bit-exact, including steps a killed run had logged
    assert values == [reference[step][0]] * len(values), step


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def reference_run(data_dir, tmp_path_factory):
  """(workdir, losses) of one uninterrupted run, checkpoints at steps 5, 10 and 12."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  stderr = run(workdir, data_dir, '--config.checkpoint_every_steps=5')
  # libtpu is installed (the test extra) and this machine has no TPU: no TPU errors.
  assert 'TPU_' not in stderr and 'libtpu' not in stderr, stderr[-3000:]
  values = losses(workdir)
  assert sorted(values) == list(range(1, STEPS + 1))
  return workdir, values


@pytest.fixture(scope='module')
def reference(reference_run):
  """Losses of one uninterrupted run."""
  return reference_run[1]


def test_same_seed_same_losses(reference, data_dir, tmp_path):
  config = tiny_config.get_config()
  config.dataset.data_dir = data_dir
  config.update(num_train_steps=STEPS, eval_every_steps=0, num_preview_images=0)
  train_loop.train_and_evaluate(config, str(tmp_path))
  assert losses(str(tmp_path)) == reference
  assert len(set(v[0] for v in reference.values())) > 1  # the losses did move


def _interrupt(workdir, data_dir, signum, at_step):
  """Runs train.py, sends `signum` once step `at_step` is logged; (saved step, its log)."""
  process = subprocess.Popen(command(workdir, data_dir, '--config.checkpoint_every_steps=5'),
                             cwd=ROOT, stderr=subprocess.PIPE, text=True)
  log = []
  for line in process.stderr:
    log.append(line)
    if f'step {at_step}/{STEPS}' in line:
      process.send_signal(signum)
      break
  log.append(process.communicate(timeout=300)[1])
  log = ''.join(log)
  assert process.returncode == 0, log[-3000:]
  assert 'Traceback' not in log and 'KeyboardInterrupt' not in log, log[-3000:]
  name = signal.Signals(signum).name
  saved = int(re.search(rf'Preempted \({name}\): saved step (\d+) in .*; rerun the same '
                        'command', log).group(1))
  assert at_step <= saved < STEPS
  assert ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')).latest_step() == saved
  return saved, log


def test_ctrl_c_and_sigterm_save_and_the_resumed_runs_are_bit_exact(reference, data_dir,
                                                                    tmp_path):
  """Ctrl-C at step 3; the rerun resumes there and gets SIGTERM at step 8; the last rerun
  finishes. Each signal finishes the step, saves, and exits 0 saying how to resume."""
  workdir = str(tmp_path)
  first, _ = _interrupt(workdir, data_dir, signal.SIGINT, 3)
  second, log = _interrupt(workdir, data_dir, signal.SIGTERM, 8)
  assert f'at step {first}' in log
  resumed = run(workdir, data_dir, '--config.checkpoint_every_steps=5')
  assert f'at step {second}' in resumed
  assert_same_losses(workdir, reference)
  # The stream's saved position is a few bytes, whatever the dataset: no shuffle buffer.
  states = glob.glob(os.path.join(workdir, 'data_state', '*', '*'))
  assert states and all(p.endswith('.json') and os.path.getsize(p) < 100 for p in states)


def _partial_checkpoints(directory):
  return [n for n in os.listdir(directory) if not n.isdigit()] if os.path.isdir(directory) else []


def test_kill_9_during_a_checkpoint_save_resumes_from_the_last_complete_one(
    reference, data_dir, tmp_path):
  workdir = str(tmp_path)
  checkpoints = os.path.join(workdir, 'checkpoints')
  process = subprocess.Popen(command(workdir, data_dir, '--config.checkpoint_every_steps=1'),
                             cwd=ROOT, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  # Saving every step: wait until a save is under way (Orbax's temporary folder) after a
  # first complete checkpoint, and kill then.
  while time.time() < deadline and process.poll() is None:
    partial = _partial_checkpoints(checkpoints)
    if partial and any(n.isdigit() for n in os.listdir(checkpoints)):
      process.kill()
      break
    time.sleep(0.001)
  process.wait()
  assert process.returncode == -signal.SIGKILL, 'the run ended before a save could be caught'
  complete = ocp.CheckpointManager(checkpoints).latest_step()
  assert complete is not None and complete < STEPS

  resumed = run(workdir, data_dir, '--config.checkpoint_every_steps=1')
  assert f'at step {complete}' in resumed
  assert_same_losses(workdir, reference)


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  config = tiny_config.get_config()
  config.dataset.data_dir = data_dir
  config.update(num_train_steps=STEPS, eval_every_steps=0, num_preview_images=0,
                checkpoint_every_steps=1)
  config.optimizer.learning_rate = 1e12
  with pytest.raises(FloatingPointError, match=r'Step (\d+): train/(loss|aux_loss|grad_norm) is '
                                               r'(nan|inf)') as error:
    train_loop.train_and_evaluate(config, str(tmp_path))
  bad_step = int(re.search(r'Step (\d+)', str(error.value)).group(1))
  manager = ocp.CheckpointManager(os.path.join(str(tmp_path), 'checkpoints'))
  assert manager.all_steps() and max(manager.all_steps()) < bad_step
  restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(restored['params']))


def test_a_damaged_latest_checkpoint_is_named_and_the_one_before_resumed_bit_exactly(
    reference_run, data_dir, tmp_path):
  """Bytes flipped in an array file: train.py resumes from the checkpoint before it, and
  the losses from there are the uninterrupted run's (the next test: other damage)."""
  how = 'flip_bytes'
  source, reference = reference_run
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(source, workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  assert sorted(map(int, os.listdir(checkpoints))) == [5, 10, STEPS]
  damage(os.path.join(checkpoints, str(STEPS)), how)
  stderr = run(workdir, data_dir, '--config.checkpoint_every_steps=5')
  warnings = [line for line in stderr.splitlines() if 'trying the one before it' in line]
  assert len(warnings) == 1 and f'checkpoints/{STEPS} ' in warnings[0], stderr[-3000:]
  assert 'Resumed from' in stderr and 'at step 10' in stderr
  assert_same_losses(workdir, reference)
  assert sorted(map(int, os.listdir(checkpoints))) == [5, 10, STEPS]  # 12 saved again
  (aside,) = os.listdir(os.path.join(workdir, 'bad_checkpoints'))
  assert aside.startswith(f'{STEPS}-')


@pytest.mark.parametrize('how', ['truncate', 'delete_array_file', 'delete_metadata',
                                 'empty_manifest'])
def test_other_damage_to_the_latest_checkpoint_is_named_and_the_one_before_restored(
    reference_run, tmp_path, caplog, monkeypatch, how):
  """The resume above, in-process, for the other ways a checkpoint breaks: the same
  `restore_verified` train.py calls, so what follows the restore is the case above's.
  A failed read leaves no traceback behind either (the reads still in flight)."""
  unraisable = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: unraisable.append(str(u.exc_value)))
  source, _ = reference_run
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(source, workdir)
  damage(os.path.join(workdir, 'checkpoints', str(STEPS)), how)
  config = tiny_config.get_config()
  state = jax.eval_shape(lambda: train_step.create_train_state(
      build_model(config.model), optimizer.create_optimizer(config.optimizer, STEPS),
      jax.random.PRNGKey(0), (1, *config.augment.crop_size, 3)))
  latest, _ = checkpoint.managers(workdir)
  with caplog.at_level(logging.WARNING):
    restored, step = checkpoint.restore_verified(
        latest, state, os.path.join(workdir, checkpoint.DIGESTS),
        os.path.join(workdir, 'bad_checkpoints'))
  assert step == 10 and int(restored.step) == 10
  time.sleep(1)  # the other reads of a truncated file complete after the restore failed
  assert 'Event loop is closed' not in unraisable
  warnings = [r.getMessage() for r in caplog.records
              if 'trying the one before it' in r.getMessage()]
  assert len(warnings) == 1 and f'checkpoints/{STEPS} ' in warnings[0], warnings
  (aside,) = os.listdir(os.path.join(workdir, 'bad_checkpoints'))
  assert aside.startswith(f'{STEPS}-')
  assert sorted(map(int, os.listdir(os.path.join(workdir, 'checkpoints')))) == [5, 10]


def test_a_save_that_reads_back_wrong_is_set_aside_and_the_good_one_before_kept(
    data_dir, tmp_path, monkeypatch, caplog):
  """Bytes change on disk right after step 2 is saved: with keep_checkpoints=1, step 1 must
  outlive it until step 3 is saved and read back intact."""
  save_state = checkpoint.save_state
  kept_before_step_3 = []

  def damaged_on_disk_at_step_2(manager, step, state, metrics=None, digests=None):
    if step == 3:
      kept_before_step_3.extend(manager.all_steps())
    host_state = save_state(manager, step, state, metrics, digests)
    if step == 2 and str(manager.directory).endswith('checkpoints'):
      damage(os.path.join(str(manager.directory), '2'), 'flip_bytes')
    return host_state

  monkeypatch.setattr(checkpoint, 'save_state', damaged_on_disk_at_step_2)
  config = tiny_config.get_config()
  config.dataset.data_dir = data_dir
  config.update(num_train_steps=3, eval_every_steps=0, num_preview_images=0,
                checkpoint_every_steps=1, keep_checkpoints=1)
  with caplog.at_level(logging.WARNING):
    train_loop.train_and_evaluate(config, str(tmp_path))
  warnings = [r.getMessage() for r in caplog.records if 'read back' in r.getMessage()]
  assert len(warnings) == 1 and 'checkpoints/2, read back, holds' in warnings[0], warnings
  assert kept_before_step_3 == [1]
  assert os.listdir(tmp_path / 'checkpoints') == ['3']
  (aside,) = os.listdir(tmp_path / 'bad_checkpoints')
  assert aside.startswith('2-')
