"""PyTorch-exact adaptive average pooling and bilinear resizing, as static matrices.

Both operations are linear maps along H and along W, so each is a pair of small
matrices built in NumPy from the (static) shapes and applied with two einsums.
This reproduces PyTorch bit-for-bit in its index arithmetic, which
`jax.image.resize` cannot: it antialiases when downsampling and has no
`align_corners=True` mode.
"""

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] averaging weights of `nn.AdaptiveAvgPool` along one axis.

  PyTorch's bin rule: bin i covers [floor(i*in/out), ceil((i+1)*in/out)), so
  bins overlap when `in_size` is not a multiple of `out_size`.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'adaptive pooling needs positive sizes, got {in_size} -> {out_size}.')
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil division in integers
    weights[i, start:end] = 1.0 / (end - start)
  return weights


@functools.lru_cache(maxsize=None)
def bilinear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """[out_size, in_size] weights of PyTorch's 1-D linear interpolation (no antialiasing).

  Mirrors `area_pixel_compute_source_index` in ATen: with align_corners=False the
  source coordinate is (dst + 0.5) * in/out - 0.5 clamped at 0; with True it is
  dst * (in - 1)/(out - 1).
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'resizing needs positive sizes, got {in_size} -> {out_size}.')
  # float32 arithmetic, as ATen's CPU kernel for float input: float64 here moves
  # source coordinates by ~1e-6 and outputs by ~1e-5.
  f32 = np.float32
  dst = np.arange(out_size, dtype=f32)
  if align_corners:
    scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    src = dst * scale
  else:
    scale = f32(in_size) / f32(out_size)
    src = np.maximum((dst + f32(0.5)) * scale - f32(0.5), f32(0))
  lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = src - lower
  weights = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lower), 1.0 - frac)
  np.add.at(weights, (rows, upper), frac)
  return weights.astype(np.float32)


def _apply_separable(x: jnp.ndarray, rows: np.ndarray, cols: np.ndarray) -> jnp.ndarray:
  """Applies `rows` along H and `cols` along W of an NHWC tensor."""
  rows = jnp.asarray(rows, x.dtype)
  cols = jnp.asarray(cols, x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', rows, x)
  return jnp.einsum('pw,bowc->bopc', cols, x)


def adaptive_avg_pool(x: jnp.ndarray, output_size: int | tuple[int, int]) -> jnp.ndarray:
  """`torch.nn.functional.adaptive_avg_pool2d` for NHWC input.

  Args:
    x: [B, H, W, C] features.
    output_size: n or (n_h, n_w) bins.
  Returns:
    [B, n_h, n_w, C] bin averages.
  """
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
  _, h, w, _ = x.shape
  return _apply_separable(x, adaptive_pool_matrix(h, out_h), adaptive_pool_matrix(w, out_w))


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], align_corners: bool) -> jnp.ndarray:
  """`F.interpolate(x, size, mode='bilinear', align_corners=...)` for NHWC input.

  Args:
    x: [B, h, w, C].
    size: (H, W) of the output.
    align_corners: False as mmsegmentation, True as hszhao/semseg.
  Returns:
    [B, H, W, C] in the dtype of `x`.
  """
  _, h, w, _ = x.shape
  out_h, out_w = size
  if (h, w) == (out_h, out_w):
    return x
  return _apply_separable(
      x, bilinear_matrix(h, out_h, align_corners), bilinear_matrix(w, out_w, align_corners))
