"""An identity that XLA:CPU computes once and keeps in memory: for the residual stream.

XLA's fusion pass duplicates cheap elementwise producers into every consumer; on CPU a
ResNet block's output relu(bn3(conv3) + residual) was recomputed inside each consumer,
reaching back through every block of the stage. `lax.optimization_barrier` cannot stop
it (XLA:CPU removes barriers before fusion), but XLA never duplicates a division by a
tensor, and x / (x * 0 + 1) is x exactly for every finite x (infinities become NaN,
which the loop's NaN check reports the same way).
"""

import jax


@jax.custom_vjp
def keep(x: jax.Array) -> jax.Array:
  """x, computed once into memory (forward and backward)."""
  return x / (x * 0 + 1)


def _keep_forward(x):
  return keep(x), None


def _keep_backward(_, grad):
  return (keep(grad),)


keep.defvjp(_keep_forward, _keep_backward)
