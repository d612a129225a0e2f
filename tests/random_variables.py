"""Random PSPNet variables in a fraction of a second: `model.init` compiles every
initialiser (tens of seconds on CPU); these are NumPy draws of the same shapes."""

from typing import Any

import flax
import numpy as np

from psp_jax.training import checkpoint


def random_variables(model, seed: int = 0) -> Any:
  """{'params', 'batch_stats'} of `model`: He-normal kernels, N(0, 0.1) biases, BN scales
  and running variances in [0.5, 1.5], running means N(0, 0.1): logits of order one."""
  rng = np.random.RandomState(seed)
  flat = flax.traverse_util.flatten_dict(checkpoint.variable_shapes(model))

  def draw(path, leaf):
    shape = leaf.shape
    if path[-1] == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
    if path[-1] in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0, 0.1, shape)

  return flax.traverse_util.unflatten_dict(
      {path: draw(path, leaf).astype(leaf.dtype) for path, leaf in flat.items()})
