"""Winograd F(2x2, 3x3) against lax's direct convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psp_jax.models.kernels import conv


def _direct(x, kernel, dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((dilation, dilation),) * 2, rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize('shape,dilation', [
    ((2, 8, 8, 5), 1),
    ((1, 13, 10, 4), 1),     # odd sizes: partial tiles at the bottom and right
    ((2, 9, 16, 3), 2),
    ((1, 17, 11, 6), 4),     # dilation larger than a tile's reach into the padding
    ((1, 1, 1, 3), 1),
])
def test_matches_direct_convolution(shape, dilation):
  rng = np.random.default_rng(sum(shape) + dilation)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 7)), jnp.float32)
  got = jax.jit(conv.winograd_conv3x3, static_argnums=2)(x, kernel, dilation)
  want = _direct(x, kernel, dilation)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_gradients_match_direct_convolution():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, 7, 9, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((1, 7, 9, 5)), jnp.float32)
  got = jax.grad(lambda x, k: jnp.sum(conv.winograd_conv3x3(x, k) * cotangent), (0, 1))(x, kernel)
  want = jax.grad(lambda x, k: jnp.sum(_direct(x, k, 1) * cotangent), (0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('shape,dilation', [((2, 8, 8, 5), 1), ((1, 13, 10, 4), 2),
                                            ((1, 17, 11, 6), 4)])
def test_transposed_kernel_is_the_input_gradient(shape, dilation):
  rng = np.random.default_rng(sum(shape))
  x = jnp.zeros(shape, jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 7)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(shape[:-1] + (7,)), jnp.float32)
  (want,) = jax.vjp(lambda x: _direct(x, kernel, dilation), x)[1](cotangent)
  got = conv.winograd_conv3x3(cotangent, kernel, dilation, transpose_kernel=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_rounding_stays_near_float32_on_wide_inputs():
  """2048 input channels, as PSPHead's bottleneck: the error bound the docstring states."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 2048)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 2048, 16)) * 0.01, jnp.float32)
  direct = _direct(x, kernel, 1)
  error = float(jnp.abs(conv.winograd_conv3x3(x, kernel) - direct).max() / jnp.abs(direct).max())
  assert error < 1e-5
