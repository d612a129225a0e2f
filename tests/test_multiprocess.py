"""Multi-host training for real on one machine: 2 train.py processes x 2 CPU devices.

The processes find each other through jax.distributed (coordinator on 127.0.0.1) and
reduce over gloo, as hosts of a pod slice do over their interconnect. Their losses,
parameters and validation metrics must equal one process with 4 devices on the same
global batch; their checkpoints are written once and resumed by both.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_config
from psp_jax import train_loop
from test_preemption import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, data_dir, steps):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  processes = [subprocess.Popen(
      [sys.executable, 'train.py', '--config=tests/tiny_config.py', f'--workdir={workdir}',
       f'--config.dataset.data_dir={data_dir}', f'--config.num_train_steps={steps}',
       '--config.eval_every_steps=4', '--multiprocess', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = [p.communicate(timeout=900)[1] for p in processes]
  for i, (p, log) in enumerate(zip(processes, logs)):
    # absl's errors and fatal lines first: an abort's stack dump fills the tail.
    errors = '\n'.join(line for line in log.splitlines() if line[:1] in 'EF' and line[1:5].isdigit())
    assert p.returncode == 0, f'process {i}:\n{errors[-3000:]}\n...\n{log[-2000:]}'
  return logs


def _config(data_dir, steps):
  config = tiny_config.get_config()
  config.dataset.data_dir = data_dir
  config.update(num_train_steps=steps, eval_every_steps=4)
  return config


def _params(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  assert step in manager.all_steps()
  return manager.restore(step, args=ocp.args.StandardRestore())['params']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  single = str(tmp_path_factory.mktemp('single'))
  multi = str(tmp_path_factory.mktemp('multi'))
  single_metrics = train_loop.train_and_evaluate(_config(data_dir, 4), single)
  logs = run_two_processes(multi, data_dir, 4)
  return dict(data_dir=data_dir, single=single, multi=multi, single_metrics=single_metrics,
              logs=logs)


def test_two_processes_train_as_one_process_with_as_many_devices(runs):
  assert 'JAX process 1/2' in runs['logs'][1]
  multi, single = losses(runs['multi']), losses(runs['single'])
  assert sorted(multi) == sorted(single) == [1, 2, 3, 4]
  np.testing.assert_allclose([multi[s] for s in sorted(multi)],
                             [single[s] for s in sorted(single)], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(_params(runs['multi'], 4)),
                  jax.tree_util.tree_leaves(_params(runs['single'], 4))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  mIoU = [float(line.split('validation mIoU ')[1].split()[0])
          for line in runs['logs'][0].splitlines() if 'validation mIoU' in line]
  assert mIoU == pytest.approx([runs['single_metrics']['mIoU']], abs=0.01)


def test_both_processes_resume_from_the_shared_checkpoint(runs):
  logs = run_two_processes(runs['multi'], runs['data_dir'], 6)
  for log in logs:
    assert 'at step 4' in log
  train_loop.train_and_evaluate(_config(runs['data_dir'], 6), runs['single'])
  for a, b in zip(jax.tree_util.tree_leaves(_params(runs['multi'], 6)),
                  jax.tree_util.tree_leaves(_params(runs['single'], 6))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
