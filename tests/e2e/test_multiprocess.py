"""Multi-host training for real on one machine: 2 train.py processes x 2 CPU devices.

The processes find each other through jax.distributed (coordinator on 127.0.0.1) and
reduce over gloo, as hosts of a pod slice do over their interconnect. Their losses,
parameters and validation metrics must equal one process with 4 devices on the same
global batch; their checkpoints are written once and resumed by both. Two evaluate.py
processes, each on its share of the split, give one process's confusion matrix; a
process killed at a random moment stops the other, and both resume bit-exactly.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import evaluate
import tiny_config
from psp_jax.models import build_model
from psp_jax.training import checkpoint, train_loop
from test_preemption import assert_same_losses
from train_losses import losses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env():
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
              JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')


def start_two_processes(script, *args):
  """`script` (train.py or evaluate.py) as processes 0 and 1 of 2, with 2 CPU devices each;
  each process's stderr goes to a temporary file (`.log`), read by `log`."""
  port = _free_port()
  processes = []
  for i in range(2):
    log_file = tempfile.TemporaryFile('w+')  # not a pipe: a full pipe would stall a process
    process = subprocess.Popen(
        [sys.executable, script, *args, '--multiprocess',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
        cwd=ROOT, env=_env(), stderr=log_file, text=True)
    process.log = log_file
    processes.append(process)
  return processes


def log(process) -> str:
  process.log.seek(0)
  return process.log.read()


def finish(processes):
  """Their logs, once both exited with status 0."""
  for p in processes:
    p.wait(timeout=900)
  logs = [log(p) for p in processes]
  for i, (p, text) in enumerate(zip(processes, logs)):
    # absl's errors and fatal lines first: an abort's stack dump fills the tail.
    errors = '\n'.join(line for line in text.splitlines()
                       if line[:1] in 'EF' and line[1:5].isdigit())
    assert p.returncode == 0, f'process {i}:\n{errors[-3000:]}\n...\n{text[-2000:]}'
  return logs


def train_args(workdir, data_dir, steps, *overrides):
  return ['--config=tests/tiny_config.py', f'--workdir={workdir}',
          f'--config.dataset.data_dir={data_dir}', f'--config.num_train_steps={steps}',
          *overrides]


STEPS = 8
# A checkpoint every 2 steps, one validation at the end, no preview: the killed runs below
# resume from these checkpoints and must log this run's losses.
SETTINGS = dict(eval_every_steps=STEPS, checkpoint_every_steps=2, num_preview_images=0)
OVERRIDES = tuple(f'--config.{key}={value}' for key, value in SETTINGS.items())


def _config(data_dir, steps):
  config = tiny_config.for_run(data_dir, steps)
  config.update(**SETTINGS)
  return config


def _params(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  assert step in manager.all_steps()
  return manager.restore(step, args=ocp.args.StandardRestore())['params']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """STEPS steps on one process with 4 devices, and uninterrupted on 2 processes x 2."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  single = str(tmp_path_factory.mktemp('single'))
  multi = str(tmp_path_factory.mktemp('multi'))
  single_metrics = train_loop.train_and_evaluate(_config(data_dir, STEPS), single)
  logs = finish(start_two_processes('train.py', *train_args(multi, data_dir, STEPS, *OVERRIDES)))
  return dict(data_dir=data_dir, single=single, multi=multi, single_metrics=single_metrics,
              logs=logs, losses=losses(multi))


def test_two_processes_train_as_one_process_with_as_many_devices(runs):
  assert 'JAX process 1/2' in runs['logs'][1]
  multi, single = runs['losses'], losses(runs['single'])
  assert sorted(multi) == sorted(single) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([multi[s] for s in sorted(multi)],
                             [single[s] for s in sorted(single)], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(_params(runs['multi'], STEPS)),
                  jax.tree_util.tree_leaves(_params(runs['single'], STEPS))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  mIoU = [float(line.split('validation mIoU ')[1].split()[0])
          for line in runs['logs'][0].splitlines() if 'validation mIoU' in line]
  assert mIoU == pytest.approx([runs['single_metrics']['mIoU']], abs=0.01)


# config.test of each mode: slide windows (with a short last row and column), and three
# scales with flip.
EVAL_MODES = {
    'slide': {'mode': 'slide', 'crop_size': (24, 40), 'stride': (16, 24), 'window_batch': 2},
    'multi_scale_flip': {'scales': (0.75, 1.0, 1.5), 'flip': True},
}


@pytest.mark.parametrize('mode', sorted(EVAL_MODES))
def test_two_processes_evaluate_their_shares_to_the_single_process_confusion_matrix(runs, mode,
                                                                                     tmp_path):
  """Slide and multi-scale + flip evaluation split over processes (each its share of the
  split, its devices side by side) sum to one 4-device process's matrix, exactly."""
  overrides = [f'--config.dataset.data_dir={runs["data_dir"]}',
               *(f'--config.test.{key}={value}' for key, value in EVAL_MODES[mode].items())]
  output = str(tmp_path / 'eval.json')
  logs = finish(start_two_processes('evaluate.py', '--config=tests/tiny_config.py',
                                    f'--workdir={runs["multi"]}', '--which=latest',
                                    f'--output={output}', *overrides))
  with open(output) as f:
    multi = np.asarray(json.load(f)['confusion_matrix'])

  config = _config(runs['data_dir'], STEPS)
  config.test.update(EVAL_MODES[mode])
  model = build_model(config.model)
  variables, _ = checkpoint.load_trained_variables(runs['multi'], 'latest')
  _, _, single = evaluate.evaluate(config, model, variables, 'validation')
  assert multi.sum() > 0
  np.testing.assert_array_equal(multi, single)
  for i, text in enumerate(logs):  # 3 validation scenes: 2 for process 0, 1 for process 1
    assert re.search(rf'Process {i} of 2 evaluates its share of validation: {2 - i} of 3 '
                     'examples', text), text[-2000:]


@pytest.mark.parametrize('victim', [1, 0])
def test_a_killed_process_stops_the_other_and_both_resume_bit_exactly(runs, victim, tmp_path):
  """kill -9 of one process at a random moment (a seeded draw) of a 2-process run: the
  other exits within 2 minutes naming it, instead of waiting at its next collective, and
  rerunning both resumes both from the shared checkpoint with the uninterrupted run's loss
  at every step. The rerun is the same whichever process died (both resume from the last
  complete checkpoint), so it runs once, after process 1's death; a 20 s heartbeat timeout
  (default 60) finds that one sooner."""
  workdir = str(tmp_path)
  args = train_args(workdir, runs['data_dir'], STEPS, *OVERRIDES)
  processes = start_two_processes('train.py', *args, '--heartbeat_timeout_seconds=20')
  # After step 3 to 7, a random moment: a checkpoint (every 2 steps) is always there.
  target = 3 + round(random.Random(victim).uniform(0.0, 1.0) * (STEPS - 4))
  deadline = time.time() + 600
  while time.time() < deadline and processes[0].poll() is None:  # process 0 logs every step
    if any(int(n) >= target for n in re.findall(rf'step (\d+)/{STEPS}', log(processes[0]))):
      break
    time.sleep(0.05)
  processes[victim].kill()
  survivor = processes[1 - victim]
  try:
    survivor.wait(timeout=120)
  except subprocess.TimeoutExpired:
    survivor.kill()
    pytest.fail(f'process {1 - victim} still ran 2 minutes after process {victim} was killed '
                f'at step {target}')
  processes[victim].wait()
  assert survivor.returncode != 0 and processes[victim].returncode == -signal.SIGKILL
  named = (r'leader task was preempted/died' if victim == 0 else
           rf'Task {victim} heartbeat timeout|stopped sending heartbeats\):\s*{victim}\b')
  assert re.search(named, log(survivor)), log(survivor)[-3000:]
  if victim == 0:
    return
  saved = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')).latest_step()
  assert saved and saved < STEPS
  for text in finish(start_two_processes('train.py', *args)):
    assert f'at step {saved}' in text, text[-2000:]
  assert_same_losses(workdir, runs['losses'], STEPS)  # steps logged twice included
