"""The model as a research tool: README's snippets as written, one features API in every
kernels mode, the pure API's input checks, and CPU runs without TPU noise."""

import pathlib
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import psp_jax
from psp_jax.base import errors, platforms
from psp_jax.models import kernels
from psp_jax.training import losses
from random_variables import random_variables

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(num_classes=5, depth=18, stem_widths=(4, 4, 8), base_width=8, ppm_channels=4,
            channels=8, aux_channels=4, dropout_rate=0.0)
MODES = ('xla', 'cpu', 'auto', 'export')


def _readme_snippets() -> str:
  text = (ROOT / 'README.md').read_text()
  section = text.split('## Using the model in your own code', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```python\n(.*?)```', section, re.S)
  assert len(blocks) == 3, len(blocks)
  return '\n'.join(blocks)


def test_readme_snippets_run_as_written_and_print_no_tpu_errors(tmp_path):
  """With libtpu installed (the test extra), a CPU machine's run must not show its errors."""
  env = {k: v for k, v in __import__('os').environ.items()
         if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  result = subprocess.run([sys.executable, '-c', _readme_snippets()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'TPU' not in result.stderr and 'libtpu' not in result.stderr, result.stderr[-3000:]


def test_the_tpu_is_left_out_only_where_there_is_none(monkeypatch):
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.setattr(platforms, 'has_tpu_chip', lambda: True)
  assert not platforms.cpu_only_without_tpu()  # a TPU VM keeps its TPU
  monkeypatch.setattr(platforms, 'has_tpu_chip', lambda: False)
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu')
  assert not platforms.cpu_only_without_tpu()  # the user's choice stands


def _images(batch=2, size=(61, 75), seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(batch, *size, 3), jnp.float32)


def _flat(tree):
  return flax.traverse_util.flatten_dict(jax.device_get(tree), sep='/')


@pytest.fixture(scope='module')
def variables():
  return random_variables(psp_jax.build_model(**TINY))


@pytest.mark.parametrize('train', [False, True])
def test_features_have_the_same_tree_and_values_in_every_mode(variables, train):
  images = _images()
  results = {}
  for mode in MODES:
    model = psp_jax.build_model(**TINY, kernels=mode)
    apply = jax.jit(lambda v, x, m=model: m.apply(v, x, train, method='features',
                                                  mutable=['batch_stats'] if train else False))
    out = apply(variables, images)
    results[mode] = out[0] if train else out
  plain = results['xla']
  assert sorted(plain) == ['aux_logits', 'logits', 'pyramid', 'stages']
  assert [s.shape[-1] for s in plain['stages']] == [8, 16, 32, 64]
  assert plain['pyramid'].shape == (*plain['stages'][3].shape[:3], 64 + 4 * 4)
  np.testing.assert_array_equal(plain['pyramid'][..., :64], plain['stages'][3])
  logits = jax.jit(lambda v, x: psp_jax.build_model(**TINY, kernels='xla').apply(
      v, x, train, mutable=['batch_stats'] if train else False))(variables, images)
  np.testing.assert_array_equal((logits[0] if train else logits)['logits'], plain['logits'])
  for mode, got in results.items():
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(plain), mode
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(plain)):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())),
                                 err_msg=mode)


def test_capture_intermediates_records_the_same_calls_in_every_mode(variables):
  images = _images()
  recorded = {}
  for mode in ('xla', 'cpu', 'export'):
    model = psp_jax.build_model(**TINY, kernels=mode)
    _, state = model.apply(variables, images, capture_intermediates=True,
                           mutable=['intermediates'])
    recorded[mode] = {k: v for k, v in _flat(state['intermediates']).items()}
  assert 'decode_head/ppm/__call__' in recorded['xla']
  for mode in ('cpu', 'export'):
    assert recorded[mode].keys() == recorded['xla'].keys(), (
        sorted(set(recorded[mode]) ^ set(recorded['xla'])))
    for key, value in recorded['xla'].items():
      got = recorded[mode][key]
      for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(value)):
        assert a.shape == b.shape, key
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())),
                                   err_msg=f'{mode} {key}')


def test_backbone_and_pyramid_build_alone_with_default_layers():
  images = _images(size=(64, 64))
  backbone = psp_jax.DilatedResNet(depth=18, base_width=8, stem_widths=(4, 4, 8))
  stages = backbone.apply(backbone.init(jax.random.PRNGKey(0), images), images)
  assert [s.shape for s in stages] == [(2, 16, 16, 8), (2, 8, 8, 16), (2, 8, 8, 32),
                                       (2, 8, 8, 64)]
  pyramid = psp_jax.PyramidPooling(channels=4)
  x = stages[-1]
  assert pyramid.apply(pyramid.init(jax.random.PRNGKey(0), x), x).shape == (2, 8, 8, 80)
  # In train mode BatchNorm uses batch statistics and updates its running ones.
  trained = psp_jax.DilatedResNet(depth=18, base_width=8, stem_widths=(4, 4, 8), train=True)
  variables = trained.init(jax.random.PRNGKey(0), images)
  _, updates = trained.apply(variables, images, mutable=['batch_stats'])
  assert not np.allclose(_flat(updates)['batch_stats/stem_bn0/mean'], 0)


@pytest.mark.parametrize('fields, message', [
    (dict(num_classes=0), r'PSPNet num_classes=0: give a whole number >= 1'),
    (dict(pool_scales=(0, 2)), r'PSPNet pool_scales=\(0, 2\): each bin count'),
    (dict(channels=0), r'PSPNet channels=0'),
    (dict(aux_in_index=4), r'PSPNet aux_in_index=4'),
    (dict(dropout_rate=1.0), r'PSPNet dropout_rate=1.0'),
    (dict(output_stride=4), r'PSPNet output_stride=4: use 8, 16 or 32'),
    (dict(kernels='fast'), r"kernels='fast'"),
])
def test_the_constructor_refuses_fields_that_cannot_build_a_network(fields, message):
  with pytest.raises(errors.InputError, match=message):
    psp_jax.PSPNet(**fields)
  with pytest.raises(errors.InputError, match=message.replace('PSPNet ', r'config\.model\.')
                     if 'kernels' not in message else message):
    psp_jax.build_model(**fields)
  with pytest.raises(errors.InputError, match='bins=\\(1, 0\\)'):
    psp_jax.PyramidPooling(bins=(1, 0))


@pytest.mark.parametrize('images, message', [
    (np.zeros((1, 64, 64, 3), np.uint8), r'images are uint8: .*psp_jax.normalize'),
    (np.zeros((1, 64, 64, 3), bool), r'images are bool'),
    (np.zeros((1, 7, 64, 3), np.float32), r'images of 7x64 pixels: each side must be at least '
                                          r'the output stride, 8'),
    (np.zeros((1, 64, 64), np.float32), r'\[B, H, W, 3\]'),
])
def test_images_the_network_cannot_take_are_refused(variables, images, message):
  model = psp_jax.build_model(**TINY)
  with pytest.raises(errors.InputError, match=message):
    model.apply(variables, images)


def test_the_smallest_image_gives_one_logit_cell(variables):
  out = psp_jax.build_model(**TINY).apply(variables, jnp.zeros((1, 8, 8, 3)))
  assert out['logits'].shape == (1, 1, 1, 5)


@pytest.mark.parametrize('labels, message', [
    (np.full((2, 16, 16), 5, np.int32), r'labels hold \[5\]: class ids must be in \[0, 5\) or 255'),
    (np.full((2, 16, 16), -1, np.int32), r'labels hold \[-1\]'),
    (np.zeros((2, 16, 16, 1), np.int32), r'got shape \(2, 16, 16, 1\) \(drop the last axis'),
    (np.zeros((2, 16, 16), np.float32), r'labels are float32'),
    (np.zeros((3, 16, 16), np.int32), r'one label map per image'),
])
def test_loss_refuses_labels_out_of_range_or_shape(labels, message):
  outputs = {'logits': jnp.zeros((2, 2, 2, 5)), 'aux_logits': jnp.zeros((2, 2, 2, 5))}
  with pytest.raises(errors.InputError, match=message):
    losses.segmentation_loss(outputs, jnp.asarray(labels))
  losses.segmentation_loss(outputs, jnp.full((2, 16, 16), 255, jnp.int32))  # all ignored: fine


def test_loss_in_jit_checks_rank_and_check_labels_checks_values_before_it():
  outputs = {'logits': jnp.zeros((2, 2, 2, 5))}
  labels = np.full((2, 16, 16), 7, np.int32)
  loss = jax.jit(lambda o, y: losses.segmentation_loss(o, y)[0])
  with pytest.raises(errors.InputError, match='drop the last axis'):
    loss(outputs, labels[..., None])
  with pytest.raises(errors.InputError, match=r'labels hold \[7\]'):
    psp_jax.check_labels(labels, 5)
  psp_jax.check_labels(np.where(labels == 7, 4, labels), 5)


def test_batch_norm_of_one_value_names_bn_axis_name_for_library_users(variables):
  model = psp_jax.build_model(**TINY)
  with pytest.raises(errors.InputError, match='bn_axis_name'):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)), train=True, mutable=['batch_stats'])


def test_auto_mode_is_the_cpu_kernels_on_this_machine():
  assert kernels.get('auto') is kernels.get('cpu')
