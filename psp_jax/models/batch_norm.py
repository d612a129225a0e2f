"""BatchNorm with PyTorch's BatchNorm2d / SyncBatchNorm numerics, NHWC.

Two things differ from flax's nn.BatchNorm, and both matter in PSPNet's pyramid, whose
1x1 bin sees one value per channel and image:
- The batch variance is computed in two passes, mean((x - mean)^2), as PyTorch does.
  The one-pass E[x^2] - E[x]^2 cancels catastrophically when mean^2 >> var, which a
  pooled feature map over a few images is.
- The running variance is updated with the unbiased batch variance, var * n / (n - 1),
  n = values per channel over the whole sync-BN group; normalisation uses the biased one.
  As PyTorch, n = 1 is an error in training mode: there is no variance to estimate.

The variables are flax's: params 'scale', 'bias'; batch_stats 'mean', 'var'.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psp_jax.base import errors


class BatchNorm(nn.Module):
  """Normalises the last axis over all others (and over `axis_name`'s devices, if set).

  Attributes:
    use_running_average: eval mode (normalise with the running statistics).
    momentum: weight of the new batch in the running statistics, PyTorch's convention
      (0.1 for BatchNorm2d; flax's nn.BatchNorm calls the same update momentum=0.9).
    epsilon: added to the variance, 1e-5 as PyTorch.
    axis_name: pmap/shard_map axis whose devices share batch statistics (sync BN).
    dtype: dtype of the output; statistics are computed in at least float32.
  """
  use_running_average: bool = False
  momentum: float = 0.1
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., C] -> [..., C] in `dtype`."""
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), self.param_dtype)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), self.param_dtype)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      stats_x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      axes = tuple(range(x.ndim - 1))
      mean = self._group_mean(stats_x.mean(axes))
      var = self._group_mean(jnp.square(stats_x - mean).mean(axes))
      count = int(np.prod(x.shape[:-1])) * (
          jax.lax.axis_size(self.axis_name) if self.axis_name else 1)
      if count == 1:
        raise errors.InputError(
            f'Expected more than 1 value per channel when training, got input size {x.shape}'
            f'{" on each of the devices of axis " + repr(self.axis_name) if self.axis_name else ""}'
            ' (as PyTorch, BatchNorm cannot estimate a variance from one value). A pyramid '
            'bin of 1 needs at least 2 images per BatchNorm group: raise the batch size per '
            'device, or share statistics across devices (train.py: config.sync_bn=True; '
            'your own pmap or shard_map: build the model with bn_axis_name=<its axis name>).')
      if not self.is_initializing():
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * mean
        running_var.value = (1 - m) * running_var.value + m * var * (count / (count - 1))
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)

  def _group_mean(self, value: jax.Array) -> jax.Array:
    return value if self.axis_name is None else jax.lax.pmean(value, self.axis_name)
