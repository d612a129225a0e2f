"""Bilinear resizing and adaptive pooling for inputs of any size, symbolic sizes included.

psp_jax/models/resample.py builds its [out, in] weight tables in NumPy from static sizes, so a
graph that uses them holds one input size. Here the same tables are computed inside the
graph from the sizes as integer and float32 values (`lax.broadcasted_iota` over the
possibly symbolic size, ATen's index arithmetic as array ops), so that `jax.export`,
jax2tf and jax2onnx write one artifact that takes any height and width. Every step is
the same IEEE operation in the same dtype as resample's: the pooling tables are resample's
bit for bit; a compiler that fuses the bilinear source coordinate's multiply and subtract
into one FMA (XLA:CPU does) moves it by up to one float32 ulp (tests/models/test_kernels.py).
The tables are then applied as resample applies them.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from psp_jax.models import resample


def _value(size) -> jnp.ndarray:
  """A (possibly symbolic) dimension size as an int32 scalar array."""
  return jnp.asarray(size, jnp.int32)


def adaptive_pool_matrix(in_size, out_size: int, dtype=jnp.float32) -> jnp.ndarray:
  """`resample.adaptive_pool_matrix` [out_size, in_size] for a possibly symbolic `in_size`:
  bin i averages [floor(i*in/out), ceil((i+1)*in/out))."""
  f = resample.table_dtype(dtype)
  bins = jax.lax.broadcasted_iota(jnp.int32, (out_size, 1), 0)
  start = bins * _value(in_size) // out_size
  end = ((bins + 1) * _value(in_size) + out_size - 1) // out_size  # ceil of positive values
  pixels = jax.lax.broadcasted_iota(jnp.int32, (1, in_size), 1)
  inside = (pixels >= start) & (pixels < end)
  return jnp.where(inside, 1 / (end - start).astype(f), jnp.zeros((), f))


def bilinear_matrix(in_size, out_size, align_corners: bool, dtype=jnp.float32) -> jnp.ndarray:
  """`resample.bilinear_matrix` [out_size, in_size] for possibly symbolic sizes: the
  source coordinate, taps and fractions of `resample.bilinear_taps`, in its dtype."""
  f = resample.table_dtype(dtype)
  n_in, n_out = _value(in_size), _value(out_size)
  dst = jax.lax.broadcasted_iota(f, (out_size, 1), 0)
  if align_corners:
    scale = jnp.where(n_out > 1, (n_in - 1).astype(f) / jnp.maximum(n_out - 1, 1).astype(f),
                      jnp.zeros((), f))
    src = dst * scale
  else:
    scale = n_in.astype(f) / n_out.astype(f)
    src = jnp.maximum((dst + f(0.5)) * scale - f(0.5), jnp.zeros((), f))
  lower = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
  upper = jnp.minimum(lower + 1, n_in - 1)
  frac = src - lower.astype(f)  # exact: src lies in [lower, lower + 1]
  pixels = jax.lax.broadcasted_iota(jnp.int32, (1, in_size), 1)
  zero = jnp.zeros((), f)
  return jnp.where(pixels == lower, 1 - frac, zero) + jnp.where(pixels == upper, frac, zero)


def adaptive_avg_pools(x: jnp.ndarray, output_sizes: Sequence[int]) -> list[jnp.ndarray]:
  """`resample.adaptive_avg_pool` of [B, H, W, C] to each n x n of `output_sizes`."""
  return [resample.apply_separable(x, adaptive_pool_matrix(x.shape[1], n, x.dtype),
                                   adaptive_pool_matrix(x.shape[2], n, x.dtype))
          for n in output_sizes]


def resize_bilinear(x: jnp.ndarray, size: Sequence, align_corners: bool) -> jnp.ndarray:
  """`resample.resize_bilinear`: [B, h, w, C] -> [B, H, W, C], (H, W) = `size`."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return resample.apply_separable(
      x, bilinear_matrix(x.shape[1], size[0], align_corners, x.dtype),
      bilinear_matrix(x.shape[2], size[1], align_corners, x.dtype))
