"""Model variables ({'params', 'batch_stats'}) on disk as an Orbax checkpoint.

This is the format `python -m psp_jax.convert` writes and that training
(`config.init_from`) and evaluation (`--checkpoint`) read.
"""

import os
from typing import Any

import orbax.checkpoint as ocp


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
