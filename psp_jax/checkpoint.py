"""Model variables ({'params', 'batch_stats'}) on disk as an Orbax checkpoint.

This is the format `python -m psp_jax.convert` writes and that training
(`config.init_from`) and evaluation (`--checkpoint`) read.
"""

import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

_MAX_LISTED = 20  # mismatched arrays listed in the error; a different depth differs in hundreds


def save_variables(directory: str | os.PathLike, variables: Any, force: bool = False) -> str:
  """Writes `variables` to `directory` (which must not exist unless `force`). Returns its path."""
  path = os.path.abspath(os.fspath(directory))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, variables, force=force)
  checkpointer.wait_until_finished()
  return path


def load_variables(directory: str | os.PathLike) -> Any:
  """Reads variables written by `save_variables` as a tree of arrays."""
  path = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint directory at {path}.')
  return ocp.StandardCheckpointer().restore(path)


def check_fits(variables: Any, expected: Any, source: str, partial: bool = False,
               fix: str = 'Use the config the checkpoint was made with.') -> None:
  """Raises ValueError listing each array of `variables` that the model lacks or shapes otherwise.

  Args:
    variables: {'params', 'batch_stats'} from a checkpoint: arrays, or Orbax metadata
      (anything with a `.shape`), so a checkpoint can be checked before it is read.
    expected: the model's variables, e.g. `jax.eval_shape` of its init.
    source: what `variables` are, for the message (a path, `config.init_from=...`).
    partial: `variables` may hold only some of the model's arrays (a converted backbone);
      otherwise an array the model has and the checkpoint lacks is a mismatch too.
    fix: the last sentence of the message, what to do.
  """
  have = traverse_util.flatten_dict(variables)
  want = traverse_util.flatten_dict(expected)

  def shape(x):
    return tuple(getattr(x, 'shape', np.shape(x)))

  problems = [f'{"/".join(k)}: checkpoint {shape(v)}, model '
              f'{shape(want[k]) if k in want else "missing"}'
              for k, v in have.items() if k not in want or shape(v) != shape(want[k])]
  if not partial:
    problems += [f'{"/".join(k)}: checkpoint missing, model {shape(v)}'
                 for k, v in want.items() if k not in have]
  if problems:
    more = len(problems) - _MAX_LISTED
    raise ValueError(
        f'{source} does not fit the model config.model builds ({len(problems)} arrays):\n  '
        + '\n  '.join(problems[:_MAX_LISTED]) + (f'\n  ... and {more} more' if more > 0 else '')
        + f'\n{fix}')
