"""The training batches as an iterator whose position is saved with each checkpoint.

A resumed run must see exactly the batches an uninterrupted run would have seen. The
tf.data iterator's own state (shuffle buffer, in-flight elements, stream position) is
written with `tf.train.Checkpoint`, one file set per process, next to the Orbax
checkpoint of the same step: `workdir/data_state/<step>/process_<i>`. Each set is
written under a temporary name and renamed into place, so a process killed while
writing never leaves a partial state where a resume would look for one.
"""

import os
import shutil

import jax
import numpy as np
import tensorflow as tf


def saved(directory: str, step: int) -> bool:
  """Whether this process's stream position at `step` was saved in `directory`."""
  return os.path.isdir(_path(directory, step))


def _path(directory: str, step: int) -> str:
  return os.path.join(directory, str(step), f'process_{jax.process_index()}')


class ResumableIterator:
  """Host (numpy) batches of `dataset`, with `save(step)` / `restore(step)` of its position.

  There is no look-ahead outside tf.data (no `prefetch_to_device`): every batch taken
  from the tf.data iterator has been returned, so the saved position is exactly that
  of the training step. tf.data's own prefetch is part of the saved state.
  """

  def __init__(self, dataset: tf.data.Dataset, directory: str):
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    self.directory = directory

  def __iter__(self):
    return self

  def __next__(self):
    return jax.tree_util.tree_map(np.asarray, next(self._iterator))

  def save(self, step: int) -> None:
    final = _path(self.directory, step)
    temporary = final + '.tmp'
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    self._checkpoint.write(os.path.join(temporary, 'iterator'))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)

  def restore(self, step: int) -> bool:
    """Moves to the position saved at `step`; False (and unchanged) if none was saved."""
    if not saved(self.directory, step):
      return False
    self._checkpoint.read(os.path.join(_path(self.directory, step), 'iterator')).assert_consumed()
    return True

  def prune(self, keep: list[int]) -> None:
    """Deletes the states of steps before the oldest in `keep` (the retained checkpoints)."""
    if not keep or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if name.isdigit() and int(name) < min(keep):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
