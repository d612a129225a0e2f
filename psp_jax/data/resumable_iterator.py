"""The training batches as an iterator whose position is saved with each checkpoint.

A resumed run must see exactly the batches an uninterrupted run would have seen. The
stream of `input_pipeline.create_split` is a function of its position (examples each
device has consumed), so that one number is the whole state: a JSON file of a few bytes
per process, next to the Orbax checkpoint of the same step,
`workdir/data_state/<step>/process_<i>.json`, whatever the dataset and however it is
shuffled. Each file is written under a temporary name and renamed into place, so a
process killed while writing never leaves a partial state where a resume would look.
"""

import json
import os
import shutil
from typing import Optional

import jax
import numpy as np
import tensorflow as tf
from absl import logging


def _path(directory: str, step: int) -> str:
  return os.path.join(directory, str(step), f'process_{jax.process_index()}.json')


def saved_position(directory: str, step: int) -> Optional[int]:
  """Examples per device consumed at `step`, as this process saved it; None if not saved."""
  path = _path(directory, step)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    state = json.load(f)
  if state['devices'] != jax.device_count():
    logging.warning('The data stream position of step %d was saved with %d devices, now '
                    'there are %d: each device reads another shard of the split, so the '
                    'examples from here on differ from an uninterrupted run\'s.', step,
                    state['devices'], jax.device_count())
  return int(state['position'])


class ResumableIterator:
  """Host (numpy) batches of `dataset`, which starts at `position`, with `save(step)` of the
  position reached.

  There is no look-ahead outside tf.data (no `prefetch_to_device`): every batch taken
  from the tf.data iterator has been returned, so the position after n batches is
  `position + n * per_device_batch`, whatever tf.data prefetched.
  """

  def __init__(self, dataset: tf.data.Dataset, per_device_batch: int, directory: str,
               position: int = 0):
    self._iterator = iter(dataset)
    self.per_device_batch, self.directory, self.position = per_device_batch, directory, position

  def __iter__(self):
    return self

  def __next__(self):
    batch = jax.tree_util.tree_map(np.asarray, next(self._iterator))
    self.position += self.per_device_batch
    return batch

  def save(self, step: int) -> None:
    final = _path(self.directory, step)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    temporary = final + '.tmp'
    with open(temporary, 'w') as f:
      json.dump({'position': self.position, 'devices': jax.device_count()}, f)
    os.replace(temporary, final)

  def prune(self, keep: list[int]) -> None:
    """Deletes the states of steps before the oldest in `keep` (the retained checkpoints)."""
    if not keep or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if name.isdigit() and int(name) < min(keep):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
