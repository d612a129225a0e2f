"""PSPNet as a pure function: jit, pmap with synchronised BN, train mode, dtypes, configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psp_jax import build_model, config as base_config

TINY = dict(depth=18, stem_widths=(4, 4, 8), base_width=4, channels=8, ppm_channels=8,
            aux_channels=4, num_classes=5)


def _config(**overrides):
  config = base_config.get_model_config()
  config.update({**TINY, **overrides})
  return config


def _images(batch=2, h=41, w=57, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, h, w, 3))


@pytest.fixture(scope='module')
def variables():
  """One initialisation shared by the tests: XLA:CPU takes ~20 s to compile the RNG of init."""
  return jax.jit(build_model(_config()).init)(jax.random.PRNGKey(0), _images())


def test_eval_outputs_at_one_eighth_and_upsampled_to_input(variables):
  model = build_model(_config())
  images = _images()
  outputs = jax.jit(model.apply)(variables, images)
  assert set(outputs) == {'logits', 'aux_logits'}
  for logits in outputs.values():
    assert logits.shape == (2, 6, 8, 5) and logits.dtype == jnp.float32
  full = jax.jit(lambda v, x: model.apply(v, x, method='segment'))(variables, images)
  assert full.shape == (2, 41, 57, 5)


def test_train_mode_updates_batch_stats_and_uses_dropout_rng(variables):
  model = build_model(_config(dropout_rate=0.5))
  images = _images()

  @jax.jit
  def train_apply(variables, key):
    return model.apply(variables, images, train=True, rngs={'dropout': key},
                       mutable=['batch_stats'])

  out_a, state = train_apply(variables, jax.random.PRNGKey(1))
  out_b, _ = train_apply(variables, jax.random.PRNGKey(1))
  out_c, _ = train_apply(variables, jax.random.PRNGKey(2))
  assert out_a['logits'].shape == (2, 6, 8, 5) and out_a['aux_logits'].shape == (2, 6, 8, 5)
  np.testing.assert_array_equal(out_a['logits'], out_b['logits'])
  assert not np.allclose(out_a['logits'], out_c['logits'])
  old = variables['batch_stats']['backbone']['stem_bn0']['mean']
  new = state['batch_stats']['backbone']['stem_bn0']['mean']
  # PyTorch momentum 0.1: new = 0.9 * old + 0.1 * batch mean
  assert not np.allclose(old, new)


def test_bn_momentum_weighs_the_batch_statistics_as_pytorch(variables):
  """config.model.bn_momentum: new = (1 - m) * old + m * batch mean, here CSAIL's 0.001."""
  images = _images()
  model = build_model(_config(bn_momentum=0.001))
  _, state = jax.jit(lambda v: model.apply(v, images, train=True, mutable=['batch_stats'],
                                           rngs={'dropout': jax.random.PRNGKey(0)}))(variables)
  # The stem's first BN normalises the first conv's output: its batch mean, computed apart.
  stem = jax.lax.conv_general_dilated(
      images, variables['params']['backbone']['stem_conv0']['kernel'], (2, 2),
      ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  old = variables['batch_stats']['backbone']['stem_bn0']['mean']
  np.testing.assert_allclose(state['batch_stats']['backbone']['stem_bn0']['mean'],
                             0.999 * old + 0.001 * stem.mean(axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-7)


def test_pmap_batchnorm_is_synchronised_across_devices(variables):
  """Per-device shards with a cross-replica BN give what one device gives on the global batch."""
  n = jax.local_device_count()
  assert n == 4, 'conftest.py asks XLA for 4 host devices'
  images = _images(batch=2 * n, h=33, w=33)
  single = build_model(_config(dropout_rate=0.0))
  expected, expected_state = jax.jit(
      lambda v, x: single.apply(v, x, train=True, mutable=['batch_stats']))(variables, images)

  synced = build_model(_config(dropout_rate=0.0), bn_axis_name='batch')
  replicated = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), variables)
  outputs, state = jax.pmap(
      lambda v, x: synced.apply(v, x, train=True, mutable=['batch_stats']),
      axis_name='batch')(replicated, images.reshape(n, 2, *images.shape[1:]))

  np.testing.assert_allclose(outputs['logits'].reshape(expected['logits'].shape),
                             expected['logits'], atol=1e-4, rtol=1e-4)
  for ours, theirs in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(
      expected_state)):
    for device in range(n):
      np.testing.assert_allclose(ours[device], theirs, atol=1e-5, rtol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_stats(variables):
  images = _images()
  f32 = build_model(_config())
  bf16 = build_model(_config(dtype='bfloat16'))
  bf16_variables = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), images)
  assert {x.dtype for x in jax.tree_util.tree_leaves(bf16_variables)} == {jnp.dtype('float32')}
  reference = jax.jit(f32.apply)(variables, images)['logits']
  low = jax.jit(bf16.apply)(variables, images)['logits']
  assert low.dtype == jnp.float32
  assert np.abs(low - reference).max() < 0.05 * np.abs(reference).max()


def test_remat_changes_memory_not_numbers(variables):
  images = _images()
  plain, remat = build_model(_config()), build_model(_config(remat=True))

  def loss(model):
    return lambda params: model.apply({**variables, 'params': params}, images)['logits'].sum()

  grads = jax.jit(jax.grad(loss(plain)))(variables['params'])
  remat_grads = jax.jit(jax.grad(loss(remat)))(variables['params'])
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(remat_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_empty_pool_scales_give_a_plain_dilated_fcn():
  images = _images()
  model = build_model(_config(pool_scales=()))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params']
  assert 'ppm' not in params['decode_head']
  assert params['decode_head']['bottleneck']['conv']['kernel'].shape == (3, 3, 32, 8)


def test_build_model_rejects_bad_config():
  with pytest.raises(ValueError, match=r"Unknown config.model keys \['num_clases'\]"):
    build_model({**TINY, 'num_clases': 3})
  with pytest.raises(ValueError, match='config.model.dtype'):
    build_model({**TINY, 'dtype': 'float8'})
  with pytest.raises(ValueError, match='NHWC'):
    build_model(TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32)))


@pytest.mark.parametrize('align_corners', [False, True])
def test_pyramid_bottleneck_equals_conv_over_the_concatenation(align_corners):
  """The head never builds PyramidPooling's concatenation; its output and gradients are the same."""
  from psp_jax.models.kernels.pyramid import PyramidBottleneck
  from psp_jax.models.pspnet import ConvBNReLU, PyramidPooling, module_defs
  conv, norm = module_defs(train=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 13, 11, 16))
  ppm = PyramidPooling((1, 2, 3, 6), *module_defs(train=False), channels=4,
                       align_corners=align_corners)
  ppm_vars = ppm.init(jax.random.PRNGKey(2), x)
  concat = ppm.apply(ppm_vars, x)
  branches = ppm.apply(ppm_vars, x, method=PyramidPooling.branches)
  fused = PyramidBottleneck(8, conv, norm, align_corners)
  plain = ConvBNReLU(8, 3, conv, norm)
  fused_vars = fused.init(jax.random.PRNGKey(3), x, branches)
  assert (jax.tree_util.tree_map(jnp.shape, fused_vars)
          == jax.tree_util.tree_map(jnp.shape, plain.init(jax.random.PRNGKey(3), concat)))

  def loss(module, *inputs):
    return lambda params: module.apply({**fused_vars, 'params': params}, *inputs,
                                       mutable=['batch_stats'])[0].sum()

  np.testing.assert_allclose(loss(fused, x, branches)(fused_vars['params']),
                             loss(plain, concat)(fused_vars['params']), rtol=1e-5)
  grads = jax.grad(loss(fused, x, branches))(fused_vars['params'])
  plain_grads = jax.grad(loss(plain, concat))(fused_vars['params'])
  np.testing.assert_allclose(grads['conv']['kernel'], plain_grads['conv']['kernel'],
                             atol=1e-4, rtol=1e-4)
