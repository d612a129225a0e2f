"""Max pooling without XLA's reduce_window gradient (select-and-scatter), slow on XLA:CPU."""

import functools

import jax
import jax.numpy as jnp


def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int) -> jnp.ndarray:
  """`resample.max_pool` as the maximum of the window's strided slices, one fused pass
  each way; the gradient goes to the first maximum of each window in row-major order,
  as ATen's indices send it."""
  return _max_pool(x, window, stride, padding)


def _pool_taps(x, window, stride, padding):
  """The padded input and, in row-major window order, its slice under each tap."""
  _, h, w, _ = x.shape
  out_h = (h + 2 * padding - window) // stride + 1
  out_w = (w + 2 * padding - window) // stride + 1
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                   constant_values=-jnp.inf)
  taps = [padded[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(window) for j in range(window)]
  return padded, taps


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  _, taps = _pool_taps(x, window, stride, padding)
  return functools.reduce(jnp.maximum, taps)


def _max_pool_fwd(x, window, stride, padding):
  out = _max_pool(x, window, stride, padding)
  return out, (x, out)


def _max_pool_bwd(window, stride, padding, residuals, grad):
  x, out = residuals
  padded, taps = _pool_taps(x, window, stride, padding)
  taken = jnp.zeros(out.shape, bool)
  padded_grad = jnp.zeros(padded.shape, grad.dtype)
  for k, tap in enumerate(taps):
    i, j = divmod(k, window)
    first = (tap == out) & ~taken
    taken = taken | first
    # Back onto the padded grid: tap k's output (y, x) came from (i + s*y, j + s*x).
    spread = [(offset, size - offset - (n - 1) * stride - 1, stride - 1)
              for offset, size, n in zip((i, j), padded.shape[1:3], tap.shape[1:3])]
    padded_grad = padded_grad + jax.lax.pad(jnp.where(first, grad, 0), jnp.zeros((), grad.dtype),
                                            [(0, 0, 0), *spread, (0, 0, 0)])
  _, h, w, _ = x.shape
  return (padded_grad[:, padding:padding + h, padding:padding + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
