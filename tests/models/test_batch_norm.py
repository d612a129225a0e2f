"""psp_jax's BatchNorm against PyTorch's BatchNorm2d: outputs, running statistics, sync BN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from psp_jax.models.batch_norm import BatchNorm


def _torch_bn(x_nhwc: np.ndarray, steps: int):
  """torch.nn.BatchNorm2d in training mode for `steps` calls; (output, running mean, var)."""
  bn = torch.nn.BatchNorm2d(x_nhwc.shape[-1]).double()
  for _ in range(steps):
    out = bn(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
  return (out.detach().numpy().transpose(0, 2, 3, 1), bn.running_mean.numpy(),
          bn.running_var.numpy())


def _ours(x, steps, axis_name=None):
  bn = BatchNorm(axis_name=axis_name, dtype=x.dtype, param_dtype=x.dtype)
  variables = bn.init(jax.random.PRNGKey(0), x)
  for _ in range(steps):
    out, updates = bn.apply(variables, x, mutable=['batch_stats'])
    variables = {'params': variables['params'], **updates}
  return out, variables['batch_stats']['mean'], variables['batch_stats']['var']


@pytest.mark.parametrize('shape', [(2, 1, 1, 5), (1, 2, 2, 5), (4, 3, 5, 5)],
                         ids=['n2-pooled', 'n4-one-image', 'n60'])
def test_training_mode_matches_pytorch_including_the_unbiased_running_variance(shape):
  x = np.random.RandomState(0).randn(*shape) * 3 + 1
  expected = _torch_bn(x, steps=3)
  with jax.enable_x64(True):
    ours = jax.jit(lambda x: _ours(x, steps=3))(jnp.asarray(x))
  for name, a, b in zip(('output', 'running mean', 'running var'), ours, expected):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)


def test_sync_bn_uses_the_whole_group_for_statistics_and_the_unbiased_count():
  """4 devices x 1 pooled value per channel: n = 4 over the group, as SyncBatchNorm."""
  n = jax.local_device_count()
  x = np.random.RandomState(1).randn(n, 1, 1, 1, 6).astype(np.float32)
  expected = _torch_bn(x.reshape(n, 1, 1, 6).astype(np.float64), steps=2)
  ours = jax.pmap(lambda x: _ours(x, steps=2, axis_name='batch'), axis_name='batch')(x)
  for name, a, b in zip(('output', 'running mean', 'running var'), ours, expected):
    for device in range(n):
      np.testing.assert_allclose(np.asarray(a[device]).reshape(np.shape(b)) if name != 'output'
                                 else a[device][0], b if name != 'output' else b[device],
                                 rtol=1e-5, atol=1e-6, err_msg=name)


def test_one_value_per_channel_is_an_error_as_in_pytorch():
  """PyTorch raises for a single value per channel in training; so do we, at trace time."""
  x = np.ones((1, 1, 1, 3), np.float32)
  with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
    torch.nn.BatchNorm2d(3).train()(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
    _ours(jnp.asarray(x), steps=1)
  with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
    # One image per device and no sync: each device's BN sees one value.
    jax.pmap(lambda x: _ours(x, steps=1))(np.ones((jax.local_device_count(), 1, 1, 1, 3)))
  bn = BatchNorm(use_running_average=True)  # eval mode normalises with running statistics
  bn.apply(bn.init(jax.random.PRNGKey(0), x), x)


def test_variance_is_two_pass_where_one_pass_would_cancel():
  """float32 values around 1e3 with spread 1e-2: mean^2 / var = 1e10."""
  x = (1e3 + 1e-2 * np.random.RandomState(2).randn(8, 4, 4, 3)).astype(np.float32)
  bn = BatchNorm(momentum=1.0)  # the running variance becomes the batch's (unbiased)
  _, updates = bn.apply(bn.init(jax.random.PRNGKey(0), x), x, mutable=['batch_stats'])
  exact = x.astype(np.float64).reshape(-1, 3).var(0, ddof=1)
  np.testing.assert_allclose(updates['batch_stats']['var'], exact, rtol=1e-3)
  flat = jnp.asarray(x).reshape(-1, 3)
  one_pass = (jnp.mean(flat**2, 0) - jnp.mean(flat, 0)**2) * 128 / 127
  assert np.abs(one_pass - exact).max() > 0.5 * exact.max()  # what the check guards against
