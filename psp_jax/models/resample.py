"""PyTorch-exact pooling and bilinear resizing, as plain linear maps from static tables.

Adaptive pooling and bilinear resizing are linear along H and along W: [out, in] weight
matrices built in NumPy from the static shapes reproduce PyTorch's index arithmetic
bit-for-bit, which `jax.image.resize` cannot (it antialiases when downsampling and has
no align_corners=True mode). psp_jax/models/kernels/ holds faster equivalents for XLA:CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def table_dtype(dtype) -> type:
  """The dtype ATen computes resampling coefficients in for `dtype` data: float64 for
  float64, float32 for everything narrower (its `opmath` type)."""
  return np.float64 if np.dtype(dtype) == np.float64 else np.float32


@functools.lru_cache(maxsize=None)
def _adaptive_pool_matrix(in_size: int, out_size: int, dtype: type) -> np.ndarray:
  if in_size < 1 or out_size < 1:
    raise ValueError(f'adaptive pooling needs positive sizes, got {in_size} -> {out_size}.')
  weights = np.zeros((out_size, in_size), dtype)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil division in integers
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_pool_matrix(in_size: int, out_size: int, dtype=np.float32) -> np.ndarray:
  """[out_size, in_size] averaging weights of `nn.AdaptiveAvgPool` along one axis.

  PyTorch's bin rule: bin i covers [floor(i*in/out), ceil((i+1)*in/out)), so
  bins overlap when `in_size` is not a multiple of `out_size`.
  """
  return _adaptive_pool_matrix(in_size, out_size, table_dtype(dtype))


def bilinear_taps(in_size: int, out_size: int, align_corners: bool,
                  dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lower, upper, frac) of PyTorch's 1-D linear interpolation: out = (1-frac)*lower + frac*upper.

  Mirrors `area_pixel_compute_source_index` in ATen: with align_corners=False the
  source coordinate is (dst + 0.5) * in/out - 0.5 clamped at 0; with True it is
  dst * (in - 1)/(out - 1). The arithmetic is ATen's for `dtype` data (`table_dtype`):
  float32 coordinates differ from float64 ones by ~1e-6, which moves outputs by ~1e-5.
  """
  return _bilinear_taps(in_size, out_size, align_corners, table_dtype(dtype))


@functools.lru_cache(maxsize=None)
def _bilinear_taps(in_size, out_size, align_corners, f32):
  if in_size < 1 or out_size < 1:
    raise ValueError(f'resizing needs positive sizes, got {in_size} -> {out_size}.')
  dst = np.arange(out_size, dtype=f32)
  if align_corners:
    scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    src = dst * scale
  else:
    scale = f32(in_size) / f32(out_size)
    src = np.maximum((dst + f32(0.5)) * scale - f32(0.5), f32(0))
  lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  return lower, upper, src - lower


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool,
                    dtype=np.float32) -> np.ndarray:
  """[out_size, in_size] weights of PyTorch's 1-D linear interpolation (no antialiasing)."""
  return _bilinear_matrix(in_size, out_size, align_corners, table_dtype(dtype))


@functools.lru_cache(maxsize=None)
def _bilinear_matrix(in_size, out_size, align_corners, dtype):
  lower, upper, frac = bilinear_taps(in_size, out_size, align_corners, dtype)
  weights = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lower), 1.0 - frac)
  np.add.at(weights, (rows, upper), frac)
  return weights.astype(dtype)


def apply_separable(x: jnp.ndarray, rows: np.ndarray, cols: np.ndarray) -> jnp.ndarray:
  """[B, H, W, C] -> [B, h, w, C]: `rows` [h, H] applied along H and `cols` [w, W] along W."""
  rows = jnp.asarray(rows, x.dtype)
  cols = jnp.asarray(cols, x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', rows, x)
  return jnp.einsum('pw,bowc->bopc', cols, x)


def interpolate_axis(x: jnp.ndarray, axis: int, out_size: int,
                     align_corners: bool) -> jnp.ndarray:
  """Linear interpolation along one axis as two gathers and a blend."""
  lower, upper, frac = bilinear_taps(x.shape[axis], out_size, align_corners, x.dtype)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray(frac.reshape(shape), x.dtype)
  return (jnp.take(x, lower, axis=axis) * (1 - frac)
          + jnp.take(x, upper, axis=axis) * frac)


def adaptive_avg_pool(x: jnp.ndarray, output_size: int | tuple[int, int]) -> jnp.ndarray:
  """`F.adaptive_avg_pool2d` for NHWC input: [B, H, W, C] -> [B, n_h, n_w, C] bin averages."""
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
  return apply_separable(x, adaptive_pool_matrix(x.shape[1], out_h, x.dtype),
                         adaptive_pool_matrix(x.shape[2], out_w, x.dtype))


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], align_corners: bool) -> jnp.ndarray:
  """`F.interpolate(x, size, mode='bilinear', align_corners=...)` for NHWC input.

  Args:
    x: [B, h, w, C].
    size: (H, W) of the output.
    align_corners: False as mmsegmentation, True as hszhao/semseg.
  Returns:
    [B, H, W, C] in the dtype of `x`.
  """
  size = tuple(int(s) for s in size)
  if tuple(x.shape[1:3]) == size:
    return x
  return apply_separable(x, bilinear_matrix(x.shape[1], size[0], align_corners, x.dtype),
                         bilinear_matrix(x.shape[2], size[1], align_corners, x.dtype))


def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int) -> jnp.ndarray:
  """`F.max_pool2d(x, window, stride, padding)` for NHWC input (padding never wins).

  Returns [B, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1, C].
  """
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pads)
