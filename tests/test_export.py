"""Exported models run outside psp_jax and give model.apply's logits and label map."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import quickstart
from psp_jax import checkpoint, export, inference
from psp_jax.models.pspnet import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(stem_widths=(4, 4, 8), base_width=4, ppm_channels=4, channels=8, aux_channels=4)
TINY_FLAGS = [f'--config.model.{k}={v}'.replace(' ', '') for k, v in TINY.items()]


@pytest.fixture(scope='module')
def trained():
  """A tiny quickstart model with random weights and random BN statistics."""
  config = quickstart.get_config()
  config.model.update(**TINY)
  model = build_model(config.model)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  leaves, tree = jax.tree_util.tree_flatten(variables['batch_stats'])
  rng = np.random.RandomState(0)
  variables = {'params': variables['params'], 'batch_stats': jax.tree_util.tree_unflatten(
      tree, [rng.uniform(0.5, 1.5, x.shape).astype(np.float32) for x in leaves])}
  return config, model, variables


def _images(height, width, count, seed):
  return np.random.RandomState(seed).randint(0, 256, (count, height, width, 3)).astype(np.uint8)


def _assert_same(outputs, model, variables, images):
  reference = np.asarray(model.apply(variables, inference.normalize(images), method='segment'))
  logits = np.asarray(outputs['logits'])
  np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
  np.testing.assert_array_equal(np.asarray(outputs['label_map']), reference.argmax(-1))


@pytest.mark.parametrize('size', [(64, 64), (48, 80)])
def test_stablehlo_runs_any_batch_and_matches_the_model(trained, size):
  _, model, variables = trained
  run = export.load_stablehlo(export.export_stablehlo(model, variables, *size))
  for count, seed in ((1, 0), (3, 1)):
    images = _images(*size, count, seed)
    _assert_same(run(images), model, variables, images)


def test_savedmodel_serves_uint8_images_and_matches_the_model(trained, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _, model, variables = trained
  export.export_savedmodel(model, variables, 48, 80, str(tmp_path / 'saved'))
  serve = tf.saved_model.load(str(tmp_path / 'saved')).signatures['serving_default']
  for count, seed in ((1, 2), (2, 3)):
    images = _images(48, 80, count, seed)
    outputs = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
    _assert_same(outputs, model, variables, images)


def test_cli_exports_a_checkpoint_and_refuses_bad_input_in_one_line(trained, tmp_path):
  _, model, variables = trained
  checkpoint.save_variables(str(tmp_path / 'variables'), variables)
  command = [sys.executable, '-m', 'psp_jax.export', '--config=configs/quickstart.py',
             *TINY_FLAGS, f'--checkpoint={tmp_path / "variables"}', '--format=stablehlo',
             '--size=64,64', f'--out={tmp_path / "model.stablehlo"}']
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  run = export.load_stablehlo((tmp_path / 'model.stablehlo').read_bytes())
  images = _images(64, 64, 2, 4)
  _assert_same(run(images), model, variables, images)
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert again.returncode == 2 and 'Traceback' not in again.stderr
  assert again.stderr.strip().splitlines()[-1] == (
      f'error: --out={tmp_path / "model.stablehlo"} exists; give a new path.')
