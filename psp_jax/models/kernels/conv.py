"""`lax.conv_general_dilated` as `nn.Conv` calls it, reshaped where XLA:CPU is slow.

Only flax's NHWC/HWIO layout with explicit padding and no feature groups is rewritten;
anything else goes to lax unchanged. Each rewrite equals lax's convolution up to float
rounding (tests/models/test_kernels.py):
- 1x1 kernels run as a matrix product (a strided 1x1 conv reads every stride-th pixel,
  so the input is sliced first).
- Kernel gradients are dots, one per tap, contracting the output gradient with the
  input window the tap sees, over batch and space; XLA:CPU lowers them as a
  convolution with batch and features swapped.
- Same-padded stride-1 3x3 convolutions with >= 256 channels on each side run as
  Winograd F(2x2, 3x3) (Lavin & Gray, 2016) in all three directions: 2.25x fewer FLOPs.
Timings: benchmarks/RESULTS.md.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

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
    return _pointwise(x, rhs[0, 0], precision, preferred_element_type)
  if plain and explicit:
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
    return winograd_conv3x3(lhs, rhs, dilation[0], precision)
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
    _, kernel_vjp = jax.vjp(lambda k: winograd_conv3x3(lhs, k, dilation[0], precision), rhs)
    lhs_grad = winograd_conv3x3(grad, rhs, dilation[0], precision, transpose_kernel=True)
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
  whatever computes that operand: the narrower one is the cheaper copy. At equal widths
  the gradient goes left, as its producer is a single fusion where the window's is the
  residual stream's BatchNorm/ReLU chain. The sum over batch and space is in at least
  float32, with both operands cast first: XLA:CPU has no dot of bfloat16 operands into
  a float32 result on every machine ("Unsupported element type for DotThunk").
  """
  accumulate = jnp.promote_types(window.dtype, jnp.float32)
  window, grad = window.astype(accumulate), grad.astype(accumulate)
  if window.shape[-1] < grad.shape[-1]:
    return jnp.einsum('bhwc,bhwo->co', window, grad, precision=precision)
  return jnp.einsum('bhwo,bhwc->oc', grad, window, precision=precision).T


_cpu_conv_grads.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pointwise(x, kernel, precision, preferred_element_type):
  return jnp.einsum('bhwc,co->bhwo', x, kernel, precision=precision,
                    preferred_element_type=preferred_element_type)


def _pointwise_forward(x, kernel, precision, preferred_element_type):
  return _pointwise(x, kernel, precision, preferred_element_type), (x, kernel)


def _pointwise_backward(precision, preferred_element_type, residuals, grad):
  x, kernel = residuals
  accumulate = jnp.promote_types(x.dtype, jnp.float32)
  x_grad = jnp.einsum('bhwo,co->bhwc', grad.astype(accumulate), kernel.astype(accumulate),
                      precision=precision).astype(x.dtype)
  return x_grad, _kernel_grad(grad.astype(x.dtype), x, precision).astype(kernel.dtype)


_pointwise.defvjp(_pointwise_forward, _pointwise_backward)


# ----------------------------------------------------------------------------- Winograd
# Each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A for its 4x4 input window d: 16
# products per tile and channel pair where the direct convolution needs 36. The transforms
# only add and halve, so rounding stays within a few float32 ulps of the direct sum. A
# dilated convolution is the same on the d x d interleaved sub-grids.

_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# G g G^T for all 16 (u, v) at once, as one product with the 9 taps: a memory-bound
# pass over the kernel, where 16 stacked elementwise sums ran 3x slower on XLA:CPU.
_G_G = np.kron(_G, _G)                                              # [16, 9]


def _combine(coefficients, arrays):
  """sum(c * a) for the nonzero c, without multiplying by +-1."""
  total = None
  for c, a in zip(coefficients, arrays):
    if c == 0:
      continue
    term = a if c == 1 else -a if c == -1 else a * c
    total = term if total is None else total + term
  return total


def winograd_conv3x3(x, kernel, dilation=1, precision=None, transpose_kernel=False):
  """Same-padded stride-1 3x3 convolution, NHWC x HWIO -> NHWC.

  Equals `lax.conv_general_dilated(x, kernel, (1, 1), ((d, d), (d, d)),
  rhs_dilation=(d, d))` up to float rounding. With `transpose_kernel`, x has the
  kernel's output channels and this is the convolution's transpose, i.e. its input
  gradient for output gradient x: the same convolution with the kernel flipped in
  space and its channel axes swapped, done without moving the kernel in memory.
  """
  if transpose_kernel:
    kernel = kernel[::-1, ::-1]
  n, h, w, c = x.shape
  d = dilation
  span = 2 * d                       # input rows between the first rows of two tiles
  tiles_h, tiles_w = -(-h // span), -(-w // span)
  # The window of the tile at block q, phase p starts at padded row q*span + p and reads
  # rows j*d after it, j = 0..3: block q + j // 2, offset (j % 2)*d + p. Padding to whole
  # blocks turns every window row into a plain slice.
  x = jnp.pad(x, ((0, 0), (d, (tiles_h + 2) * span - h - d),
                  (d, (tiles_w + 2) * span - w - d), (0, 0)))
  x = x.reshape(n, tiles_h + 2, span, tiles_w + 2, span, c)

  def rows(j):
    block, offset = divmod(j, 2)
    return x[:, block:block + tiles_h, offset * d:offset * d + d]

  def cols(t, j):
    block, offset = divmod(j, 2)
    return t[:, :, :, block:block + tiles_w, offset * d:offset * d + d]

  row_sums = [_combine(_B_T[u], [rows(j) for j in range(4)]) for u in range(4)]
  inputs = jnp.stack([_combine(_B_T[v], [cols(t, j) for j in range(4)])
                      for t in row_sums for v in range(4)])       # [16, n, th, d, tw, d, c]
  inputs = inputs.reshape(16, -1, c)

  filters = jnp.einsum('uk,kf->uf', _G_G.astype(kernel.dtype), kernel.reshape(9, -1),
                       precision=precision)
  filters = filters.reshape(16, *kernel.shape[2:])                # [16, c, o] or [16, o, c]

  products = jnp.einsum('tpo,tco->tpc' if transpose_kernel else 'tpc,tco->tpo',
                        inputs, filters, precision=precision)
  products = products.reshape(4, 4, n, tiles_h, d, tiles_w, d, -1)
  out_rows = [_combine(_A_T[r], [products[u] for u in range(4)]) for r in range(2)]
  out = jnp.stack([jnp.stack([_combine(_A_T[s], [t[v] for v in range(4)]) for s in range(2)])
                   for t in out_rows])                             # [2, 2, n, th, d, tw, d, o]
  out = out.transpose(2, 3, 0, 4, 5, 1, 6, 7).reshape(n, tiles_h * span, tiles_w * span, -1)
  return out[:, :h, :w]
