"""`lax.conv_general_dilated` as `nn.Conv` calls it, reshaped where XLA:CPU is slow.

Only flax's NHWC/HWIO layout with explicit padding and no feature groups is
rewritten; anything else goes to lax unchanged. Measured on 2 cores (benchmarks/):

- 1x1 kernels run as a matrix product, on every backend. XLA:CPU ran a 1x1
  convolution about 3x slower than the same contraction as a dot (0.21 s vs 0.07 s
  for 2048->512 channels at 64x64); a strided 1x1 conv reads every stride-th pixel,
  so slicing first gives the same result.
- On CPU, other kernel gradients are dots, one per tap, each contracting the output
  gradient with the input window the tap sees, over batch and space. XLA:CPU lowers
  the kernel gradient of a convolution to a convolution with batch and features
  swapped, 2-3x slower than the dots (3x3 2048->512 at 64x64: 2.04 s vs 0.71 s).
  XLA copies the dot's left operand transposed and fuses its producer into the copy
  (for the input window, the residual stream's BatchNorm/ReLU chain, up to 150 ms
  per copy); `_kernel_grad` picks the operand that is cheaper to copy.
  Input gradients stay XLA's own, except for the Winograd ones below.
- On CPU, same-padded stride-1 3x3 convolutions with 256 or more channels on each
  side (stages 3 and 4, both heads' 3x3 convolutions) run as Winograd F(2x2, 3x3)
  (`winograd.py`, 2.25x fewer FLOPs) in all three directions: the input gradient is
  the same convolution with the kernel flipped and transposed, the kernel gradient
  the transpose of Winograd's products (1.4-1.8x faster than the tap dots). Single
  convolutions at the train step's shapes (2x32x32, median of 5): 2048->512 forward
  0.31 s vs 0.50 s, input gradient 0.26 s vs 0.51 s; 512->512 dilation 4: 0.08 s vs
  0.11 s each way. Narrower convolutions measured no faster, so they keep XLA's.

GPUs keep XLA's lowering of everything but the 1x1 dots: cuDNN and cuBLAS pick their
own algorithms and layouts there.
"""

import functools

import jax
import jax.numpy as jnp

from psp_jax.models import winograd

_NHWC = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
_WINOGRAD_MIN_CHANNELS = 256


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, preferred_element_type=None, **kwargs):
  """Drop-in for `lax.conv_general_dilated` (the signature `nn.Conv` calls)."""
  explicit = not isinstance(padding, str) and all(lo >= 0 and hi >= 0 for lo, hi in padding)
  plain = (rhs.ndim == 4 and feature_group_count == 1 and dimension_numbers == _NHWC
           and kwargs.get('batch_group_count', 1) == 1 and not kwargs.get('precision_config')
           and all(d == 1 for d in (lhs_dilation or (1, 1))))
  if plain and tuple(rhs.shape[:2]) == (1, 1) and (padding == 'VALID' or (
      explicit and all(tuple(p) == (0, 0) for p in padding))):
    x = lhs[:, ::window_strides[0], ::window_strides[1], :]
    if jax.default_backend() == 'cpu':
      return _pointwise(x, rhs[0, 0], precision, preferred_element_type)
    return jnp.einsum('bhwc,co->bhwo', x, rhs[0, 0], precision=precision,
                      preferred_element_type=preferred_element_type)
  if plain and explicit and jax.default_backend() == 'cpu':
    return _cpu_conv_grads(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding),
                           tuple(rhs_dilation or (1, 1)), precision, preferred_element_type)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, preferred_element_type=preferred_element_type, **kwargs)


def _lax_conv(lhs, rhs, strides, padding, dilation, precision, preferred_element_type):
  return jax.lax.conv_general_dilated(
      lhs, rhs, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
      precision=precision, preferred_element_type=preferred_element_type)


def _winograd(rhs, strides, padding, dilation, preferred_element_type):
  return (rhs.shape[:2] == (3, 3) and strides == (1, 1) and dilation[0] == dilation[1]
          and padding == ((dilation[0],) * 2,) * 2 and preferred_element_type is None
          and min(rhs.shape[2:]) >= _WINOGRAD_MIN_CHANNELS)


def _cpu_conv(lhs, rhs, strides, padding, dilation, precision, preferred_element_type):
  if _winograd(rhs, strides, padding, dilation, preferred_element_type):
    return winograd.conv3x3(lhs, rhs, dilation[0], precision)
  return _lax_conv(lhs, rhs, strides, padding, dilation, precision, preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _cpu_conv_grads(lhs, rhs, strides, padding, dilation, precision, preferred_element_type):
  return _cpu_conv(lhs, rhs, strides, padding, dilation, precision, preferred_element_type)


def _forward(lhs, rhs, strides, padding, dilation, precision, preferred_element_type):
  out = _cpu_conv(lhs, rhs, strides, padding, dilation, precision, preferred_element_type)
  return out, (lhs, rhs)


def _backward(strides, padding, dilation, precision, preferred_element_type, residuals, grad):
  lhs, rhs = residuals
  if _winograd(rhs, strides, padding, dilation, preferred_element_type):
    grad = grad.astype(lhs.dtype)
    _, kernel_vjp = jax.vjp(lambda k: winograd.conv3x3(lhs, k, dilation[0], precision), rhs)
    lhs_grad = winograd.conv3x3(grad, rhs, dilation[0], precision, transpose_kernel=True)
    return lhs_grad, kernel_vjp(grad)[0].astype(rhs.dtype)
  _, input_vjp = jax.vjp(
      lambda x: _lax_conv(x, rhs, strides, padding, dilation, precision,
                          preferred_element_type), lhs)
  (lhs_grad,) = input_vjp(grad)
  padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  out_h, out_w = grad.shape[1:3]
  grad = grad.astype(lhs.dtype)
  taps = []
  for i in range(rhs.shape[0]):
    for j in range(rhs.shape[1]):
      top, left = i * dilation[0], j * dilation[1]
      window = padded[:, top:top + strides[0] * (out_h - 1) + 1:strides[0],
                      left:left + strides[1] * (out_w - 1) + 1:strides[1]]
      taps.append(_kernel_grad(grad, window, precision))
  return lhs_grad, jnp.stack(taps).reshape(rhs.shape).astype(rhs.dtype)


def _kernel_grad(grad, window, precision):
  """[C, O] = window^T grad over batch and space, the narrower operand on the left.

  XLA:CPU copies the left operand transposed for the dot, fusing into the copy
  whatever computes that operand: the narrower one is the cheaper copy (a
  bottleneck's 512->2048 conv3: train step 4.53 s vs 4.92 s with the gradient on
  the left). At equal widths the gradient goes left, as its producer is a single
  fusion where the window's is the residual stream's BatchNorm/ReLU chain.
  """
  accumulate = jnp.promote_types(window.dtype, jnp.float32)
  if window.shape[-1] < grad.shape[-1]:
    return jnp.einsum('bhwc,bhwo->co', window, grad, precision=precision,
                      preferred_element_type=accumulate)
  return jnp.einsum('bhwo,bhwc->oc', grad, window, precision=precision,
                    preferred_element_type=accumulate).T


_cpu_conv_grads.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pointwise(x, kernel, precision, preferred_element_type):
  return jnp.einsum('bhwc,co->bhwo', x, kernel, precision=precision,
                    preferred_element_type=preferred_element_type)


def _pointwise_forward(x, kernel, precision, preferred_element_type):
  return _pointwise(x, kernel, precision, preferred_element_type), (x, kernel)


def _pointwise_backward(precision, preferred_element_type, residuals, grad):
  x, kernel = residuals
  x_grad = jnp.einsum('bhwo,co->bhwc', grad.astype(x.dtype), kernel, precision=precision,
                      preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)
                      ).astype(x.dtype)
  return x_grad, _kernel_grad(grad.astype(x.dtype), x, precision).astype(kernel.dtype)


_pointwise.defvjp(_pointwise_forward, _pointwise_backward)
