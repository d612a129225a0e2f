"""psp_jax.models.conv against lax.conv_general_dilated: values and both gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psp_jax.models.kernels.conv import conv_general_dilated

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _convs(kernel, strides, padding, dilation, dtype=jnp.float32):
  dn = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), NHWC)
  ours = lambda x, w: conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                           dimension_numbers=dn)
  theirs = lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dn,
      precision=jax.lax.Precision.HIGHEST)
  return ours, theirs


@pytest.mark.parametrize('kernel,strides,padding,dilation', [
    (3, (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (3, (1, 1), ((4, 4), (4, 4)), (4, 4)),
    (3, (2, 2), ((1, 1), (1, 1)), (1, 1)),      # stem / stage-2 downsampling, odd sizes
    (7, (2, 2), ((3, 3), (3, 3)), (1, 1)),      # classic stem
    (3, (1, 2), ((2, 0), (1, 3)), (2, 1)),      # asymmetric everything
    (1, (2, 2), 'VALID', (1, 1)),               # strided 1x1 as a dot
    (1, (1, 1), ((0, 0), (0, 0)), (1, 1)),
])
def test_values_and_gradients_match_lax(kernel, strides, padding, dilation):
  rng = np.random.default_rng(kernel)
  x = jnp.asarray(rng.standard_normal((2, 13, 11, 6)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 6, 5)), jnp.float32)
  ours, theirs = _convs(kernel, strides, padding, dilation)
  np.testing.assert_allclose(jax.jit(ours)(x, w), theirs(x, w), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.standard_normal(theirs(x, w).shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * cotangent)
  for got, want in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, w),
                       jax.grad(loss(theirs), (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('kernel,strides', [(1, (1, 1)), (3, (2, 2))])
def test_kernel_gradient_with_more_outputs_than_inputs(kernel, strides):
  """The window is then the dot's left operand (see conv._kernel_grad)."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((2, 9, 10, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 11)), jnp.float32)
  padding = ((kernel // 2,) * 2,) * 2
  ours, theirs = _convs(kernel, strides, padding, (1, 1))
  cotangent = jnp.asarray(rng.standard_normal(theirs(x, w).shape), jnp.float32)
  got = jax.grad(lambda w: jnp.sum(ours(x, w) * cotangent))(w)
  want = jax.grad(lambda w: jnp.sum(theirs(x, w) * cotangent))(w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bfloat16_gradient_keeps_dtypes_and_accumulates_in_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 32)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 8)) * 0.1, jnp.bfloat16)
  ours, theirs = _convs(3, (1, 1), ((1, 1), (1, 1)), (1, 1))
  gx, gw = jax.grad(lambda x, w: jnp.sum(ours(x, w).astype(jnp.float32)), (0, 1))(x, w)
  assert gx.dtype == gw.dtype == jnp.bfloat16
  exact = jax.grad(lambda w: jnp.sum(theirs(x.astype(jnp.float32), w)))(w.astype(jnp.float32))
  np.testing.assert_allclose(gw.astype(jnp.float32), exact, rtol=1e-2, atol=0.5)


def test_grouped_and_string_padding_fall_back_to_lax():
  x = jnp.ones((1, 8, 8, 4))
  dn = jax.lax.conv_dimension_numbers(x.shape, (3, 3, 2, 4), NHWC)
  w = jnp.ones((3, 3, 2, 4))
  got = conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn, feature_group_count=2)
  want = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn,
                                      feature_group_count=2)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('dilation', [1, 2])
def test_wide_same_padded_3x3_runs_winograd_both_ways_and_matches_lax(dilation):
  """256+ channels each side take Winograd on CPU, forward and input gradient alike."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((1, 7, 6, 256)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 256, 384)) * 0.02, jnp.float32)
  ours, theirs = _convs(3, (1, 1), ((dilation, dilation),) * 2, (dilation, dilation))
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) ** 2)
  if jax.default_backend() == 'cpu':
    assert 'conv_general_dilated' not in str(jax.make_jaxpr(jax.grad(loss(ours), (0, 1)))(x, w))
  want = theirs(x, w)
  np.testing.assert_allclose(ours(x, w), want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  for got, want in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(theirs), (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_narrow_side_keeps_the_direct_convolution():
  """2048 -> 4 channels: too few outputs for the transforms to pay, so lax's conv runs."""
  x = jnp.ones((1, 5, 6, 2048))
  w = jnp.ones((3, 3, 2048, 4))
  ours, _ = _convs(3, (1, 1), ((1, 1), (1, 1)), (1, 1))
  assert 'conv_general_dilated' in str(jax.make_jaxpr(ours)(x, w))
