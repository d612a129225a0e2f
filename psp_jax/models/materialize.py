"""An identity that XLA:CPU computes once and keeps, for the residual stream.

XLA's fusion pass duplicates cheap elementwise producers into every consumer. On CPU
that includes a ResNet block's output relu(bn3(conv3) + residual): it was never
written to memory, but recomputed inside each consumer (the next block's 1x1
convolutions, its residual add, and in the backward pass the transposed copies made
for the kernel gradients), and since the residual is itself such a chain, each
recomputation reached back through every block of the stage (48 ms for one
transposed copy of stage 3's output in a 2x256x256 train step).
`lax.optimization_barrier` cannot stop it: XLA:CPU removes barriers before fusion.

A floating-point division by a tensor is one of the operations XLA will not
duplicate, and x / (x * 0 + 1) is x exactly for every finite x (infinities become
NaN, which the training loop's NaN check reports the same way; denormals flush to
zero, as in any XLA:CPU arithmetic). Applied to each block's output, forward and
backward, on 2 cores (same process, alternated, median of 9): train step at
2x256x256 1.60 -> 1.50 s (1.36 -> 1.27 s with freed memory kept by malloc), eval at
1x512x512 0.69 -> 0.67 s. Other backends fuse differently and get the plain
identity.
"""

import jax


def materialize(x: jax.Array) -> jax.Array:
  """x, computed once into memory on CPU (see the module docstring); x elsewhere."""
  if jax.default_backend() != 'cpu':
    return x
  return _kept(x)


@jax.custom_vjp
def _kept(x):
  return x / (x * 0 + 1)


def _kept_forward(x):
  return _kept(x), None


def _kept_backward(_, grad):
  return (_kept(grad),)


_kept.defvjp(_kept_forward, _kept_backward)
