"""materialize: an exact identity that XLA:CPU computes once instead of in every consumer."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from psp_jax.models.kernels.keep import keep as materialize


def test_identity_on_values_and_gradients():
  # (Denormals are left out: XLA:CPU flushes them to zero in any arithmetic.)
  x = jnp.asarray([0.0, -0.0, 3e-38, -3.5, 7e37, 1.0, 2.0**-126], jnp.float32)
  np.testing.assert_array_equal(materialize(x), x)
  assert np.signbit(materialize(x))[1]
  grad = jax.grad(lambda v: jnp.sum(materialize(v) * jnp.arange(7.0)))(x)
  np.testing.assert_array_equal(grad, jnp.arange(7.0))


def _fusions_computing(hlo: str, op: str) -> int:
  """How many fused computations of a compiled module contain an `op` instruction."""
  fusions, current = set(), None
  for line in hlo.splitlines():
    if line.startswith('%'):
      current = line.split()[0] if 'fused_computation' in line.split()[0] else None
    elif current and re.search(rf'= f32\[[\d,]*\]\S* {op}\(', line):
      fusions.add(current)
  return len(fusions)


def test_residual_sum_is_computed_once_for_several_transposing_consumers():
  """Without it, XLA fuses relu(a + b) into each consumer, transposed copies included."""
  def block(a, b, c, d, keep):
    out = jax.nn.relu(a + b)
    out = materialize(out) if keep else out
    return out.T @ c, out @ d, out.T * 2

  args = [jnp.ones((64, 32)), jnp.ones((64, 32)), jnp.ones((64, 8)), jnp.ones((32, 8))]
  kept = jax.jit(lambda *a: block(*a, True)).lower(*args).compile().as_text()
  plain = jax.jit(lambda *a: block(*a, False)).lower(*args).compile().as_text()
  assert _fusions_computing(kept, 'add') == 1
  assert _fusions_computing(plain, 'add') > 1
