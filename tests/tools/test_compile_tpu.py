"""train.py's pmapped train step and evaluate.py's eval step compile for a TPU, here.

libtpu (the `[tpu]` extra, part of `[test]`) compiles for abstract TPU devices on a CPU-only
machine; benchmarks/compile_tpu.py does that for a config and reports XLA's figures per
device. A change that breaks TPU compilation (an op libtpu rejects, a sharding pmap cannot
lower) fails here, not on a user's pod.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import optax
import pytest

import tiny_config
from psp_jax.models.pspnet import build_model
from psp_jax.training import train_step

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_tiny_train_and_eval_steps_compile_for_a_v5e_topology(tmp_path):
  if importlib.util.find_spec('libtpu') is None:
    pytest.fail('libtpu is not installed, so nothing was compiled for a TPU: '
                'pip install -e ".[test]" (or ".[tpu]") brings it.')
  env = dict(os.environ, PYTHONPATH=f'{ROOT}{os.pathsep}{ROOT / "tests"}')
  env.pop('XLA_FLAGS', None)  # the tests' simulated CPU devices are not the TPU's
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.compile_tpu',
       f'--config={ROOT / "tests/tiny_config.py"}', '--topology=v5e:2x2'],
      capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  reports = {r['program']: r for r in map(json.loads, result.stdout.splitlines())}
  train, evaluation = reports['train'], reports['eval']
  for report in (train, evaluation):
    assert report['device_kind'].startswith('TPU v5') and report['devices'] == report['chips'] == 4
    assert report['fits'] and 0 < report['total_bytes'] < 2**30
    assert report['flops'] > 0 and report['bytes_accessed'] > 0

  # Per device, the train step holds the whole state and its batch, and donates the state.
  config = tiny_config.get_config()
  model = build_model(config.model, bn_axis_name='batch')
  tx = optax.sgd(0.01, momentum=0.9)
  height, width = config.augment.crop_size
  state = jax.eval_shape(lambda: train_step.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, height, width, 3)))
  state_bytes = _tree_bytes((state.params, state.opt_state, state.batch_stats))
  batch_bytes = train['per_device_batch'] * height * width * (3 + 1) * 4
  assert train['per_device_batch'] == config.batch_size // 4
  assert train['argument_bytes'] >= state_bytes + batch_bytes
  assert train['alias_bytes'] >= state_bytes
  # Forward and backward (about 3x the forward) against the eval step at the same size,
  # which is the forward plus a bilinear resize to the label and a one-hot confusion
  # matrix, not small next to the tiny net's forward (train 1.97x eval with 10 classes): a
  # train step without its backward pass would come in under the eval step.
  assert train['flops'] > 1.5 * evaluation['flops']
