"""3x3 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

Each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A for its 4x4 input window d:
16 products per tile and channel pair where the direct convolution needs 36, so the
channel contraction becomes 16 matrix products with 2.25x fewer FLOPs than the
convolution. The transforms only add and halve, so rounding stays within a few float32
ulps of the direct sum (max relative error ~2e-6 on 2048 channels). A dilated
convolution is the same on the d x d interleaved sub-grids, so a tile here is 2 outputs
d apart in each direction.
"""

import jax.numpy as jnp
import numpy as np

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


def conv3x3(x, kernel, dilation=1, precision=None, transpose_kernel=False):
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
