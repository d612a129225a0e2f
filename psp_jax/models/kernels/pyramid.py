"""PSPHead's pyramid and 3x3 bottleneck without the concatenation: the same parameters and
outputs (up to float rounding) as models/pspnet.py's plain head, fewer FLOPs and copies.

- All bins of all sizes pool in one [bins, H * W] product that contracts x's pixel axis in
  place (the separable form copies x transposed first).
- The bottleneck's 3x3 convolution of the upsampled branches runs at their n x n size:
  upsampling and convolution are both linear, so each of the 3x3 taps upsamples the
  convolved small map with a shifted, zero-padded copy of the bilinear matrices. At
  512x512 that is half of the head's FLOPs.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psp_jax.models import resample


def adaptive_avg_pools(x: jnp.ndarray, output_sizes: Sequence[int]) -> list[jnp.ndarray]:
  """`resample.adaptive_avg_pool` of [B, H, W, C] to each n x n of `output_sizes`, in one product."""
  batch, h, w, channels = x.shape
  weights = np.concatenate([np.kron(resample.adaptive_pool_matrix(h, n, x.dtype),
                                    resample.adaptive_pool_matrix(w, n, x.dtype))
                            for n in output_sizes])
  weights = jnp.broadcast_to(jnp.asarray(weights, x.dtype), (batch, *weights.shape))
  pooled = jnp.einsum('bqn,bnc->bqc', weights, x.reshape(batch, h * w, channels))
  splits = np.cumsum([n * n for n in output_sizes])[:-1]
  return [p.reshape(batch, n, n, channels)
          for p, n in zip(jnp.split(pooled, splits, axis=1), output_sizes)]


@functools.lru_cache(maxsize=None)
def _shifted_bilinear_matrices(in_size: int, out_size: int, align_corners: bool,
                               dtype: type) -> np.ndarray:
  """[3, out_size, in_size]: row y of slice i upsamples output pixel y + i - 1, or is 0 outside."""
  padded = np.pad(resample.bilinear_matrix(in_size, out_size, align_corners, dtype),
                  ((1, 1), (0, 0)))
  return np.stack([padded[i:i + out_size] for i in range(3)])


def upsampled_conv3x3(x: jnp.ndarray, kernel: jnp.ndarray, size: tuple[int, int],
                      align_corners: bool) -> jnp.ndarray:
  """3x3 convolution (stride 1, zero padding 1) of `resample.resize_bilinear(x, size)`.

  Args:
    x: [B, h, w, C] low-resolution map. kernel: [3, 3, C, O] (HWIO).
    size: (H, W) that `x` is upsampled to.
  Returns:
    [B, H, W, O].
  """
  _, h, w, _ = x.shape
  dtype = resample.table_dtype(x.dtype)
  rows = jnp.asarray(_shifted_bilinear_matrices(h, size[0], align_corners, dtype), x.dtype)
  cols = jnp.asarray(_shifted_bilinear_matrices(w, size[1], align_corners, dtype), x.dtype)
  taps = jnp.einsum('bhwc,ijco->bijhwo', x, kernel)
  taps = jnp.einsum('jxw,bijhwo->bihxo', cols, taps)
  return jnp.einsum('iyh,bihxo->byxo', rows, taps)


class _ConcatConv3x3(nn.Module):
  """The 3x3 convolution of concat([x, upsampled branches]), computed without the concat.

  Its one parameter is where nn.Conv stores its own ('conv/kernel'), and its output is
  what the plain head's nn.Conv returns, so capture_intermediates records the same value.
  """
  features: int
  conv: Any      # the model's nn.Conv definition: its dtype, param_dtype, init and lowering
  align_corners: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, branches: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """x: [B, h, w, C], branches: [B, n, n, c] each -> [B, h, w, features]."""
    conv = self.conv(self.features, (3, 3), parent=None)  # read, never called
    widths = [x.shape[-1]] + [y.shape[-1] for y in branches]
    kernel = self.param('kernel', conv.kernel_init, (3, 3, sum(widths), self.features),
                        conv.param_dtype)
    parts = jnp.split(kernel.astype(conv.dtype), np.cumsum(widths)[:-1], axis=2)
    out = conv.conv_general_dilated(
        x.astype(conv.dtype), parts[0], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, parts[0].shape,
                                                         ('NHWC', 'HWIO', 'NHWC')))
    for y, part in zip(branches, parts[1:]):
      out = out + upsampled_conv3x3(y.astype(conv.dtype), part, x.shape[1:3],
                                    self.align_corners)
    return out


class PyramidBottleneck(nn.Module):
  """ConvBNReLU(features, 3) over concat([x, upsampled branches]), without the concat.

  The parameters are those of the plain head's 'bottleneck' (mmseg's channel order: x,
  then the branches by bin): 'conv/kernel' [3, 3, C + sum(branch widths), features], 'bn'.
  """
  features: int
  conv: Any      # the model's nn.Conv definition
  norm: Any      # the model's BatchNorm definition
  align_corners: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, branches: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """x: [B, h, w, C], branches: [B, n, n, c] each -> [B, h, w, features]."""
    out = _ConcatConv3x3(self.features, self.conv, self.align_corners, name='conv')(x, branches)
    return nn.relu(self.norm(name='bn')(out))
