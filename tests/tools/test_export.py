"""Exported models run outside psp_jax and give model.apply's logits and label map, at
every batch size and image size from one artifact."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import quickstart
from psp_jax import export
from psp_jax.evaluation import inference
from psp_jax.models.pspnet import build_model
from psp_jax.training import checkpoint
from random_variables import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(stem_widths=(4, 4, 8), base_width=4, ppm_channels=4, channels=8, aux_channels=4)
TINY_FLAGS = [f'--config.model.{k}={v}'.replace(' ', '') for k, v in TINY.items()]
# (batch, height, width): pyramid inputs of 6x10, 8x8 and 13x17, bins overlapping in the last.
SHAPES = [(1, 48, 80), (2, 64, 64), (1, 97, 129)]


@pytest.fixture(scope='module')
def trained():
  """A tiny quickstart model with random weights and BN statistics, and its reference
  outputs on images of each of SHAPES."""
  config = quickstart.get_config()
  config.model.update(**TINY)
  model = build_model(config.model)
  variables = random_variables(model)
  segment = jax.jit(lambda v, x: model.apply(v, x, method='segment'))
  cases = []
  for seed, (count, height, width) in enumerate(SHAPES):
    images = np.random.RandomState(seed).randint(0, 256, (count, height, width, 3)).astype(np.uint8)
    cases.append((images, np.asarray(segment(variables, inference.normalize(images)))))
  return model, variables, cases


def _assert_same(outputs, reference):
  logits = np.asarray(outputs['logits'])
  np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
  np.testing.assert_array_equal(np.asarray(outputs['label_map']), reference.argmax(-1))


def test_stablehlo_takes_any_batch_and_size_and_matches_the_model(trained):
  model, variables, cases = trained
  data = export.export_stablehlo(model, variables)
  assert str(jax.export.deserialize(bytearray(data)).in_avals[0].shape) == '(b, h, w, 3)'
  run = export.load_stablehlo(data)
  for images, reference in cases:
    _assert_same(run(images), reference)


def test_savedmodel_serves_uint8_images_of_any_size_and_matches_the_model(trained, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model, variables, cases = trained
  export.export_savedmodel(model, variables, str(tmp_path / 'saved'))
  serve = tf.saved_model.load(str(tmp_path / 'saved')).signatures['serving_default']
  assert serve.structured_input_signature[1]['images'].shape.as_list() == [None, None, None, 3]
  for images, reference in cases:
    _assert_same({k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}, reference)


def test_onnx_runs_in_onnxruntime_at_any_batch_and_size_and_matches_the_model(trained, tmp_path):
  import onnx  # pylint: disable=g-import-not-at-top
  import onnxruntime  # pylint: disable=g-import-not-at-top
  model, variables, cases = trained
  path = str(tmp_path / 'model.onnx')
  export.export_onnx(model, variables, path)
  shape = onnx.load(path).graph.input[0].type.tensor_type.shape
  assert [d.dim_value or d.dim_param for d in shape.dim] == ['b', 'h', 'w', 3]
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  for images, reference in cases:
    label_map, logits = session.run(['label_map', 'logits'], {'images': images})
    assert label_map.dtype == np.int32 and logits.dtype == np.float32
    _assert_same({'label_map': label_map, 'logits': logits}, reference)


def test_cli_exports_a_checkpoint_and_refuses_bad_input_in_one_line(trained, tmp_path):
  model, variables, cases = trained
  checkpoint.save_variables(str(tmp_path / 'variables'), variables)
  command = [sys.executable, '-m', 'psp_jax.export', '--config=configs/quickstart.py',
             *TINY_FLAGS, f'--checkpoint={tmp_path / "variables"}', '--format=stablehlo',
             f'--out={tmp_path / "model.stablehlo"}']
  subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
  run = export.load_stablehlo((tmp_path / 'model.stablehlo').read_bytes())
  images, reference = cases[0]
  _assert_same(run(images), reference)
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert again.returncode == 2 and 'Traceback' not in again.stderr
  assert again.stderr.strip().splitlines()[-1] == (
      f'error: --out={tmp_path / "model.stablehlo"} exists; give a new path.')
