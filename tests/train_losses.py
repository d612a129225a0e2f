"""The train/loss values a run wrote to TensorBoard, for comparing runs bit for bit."""

import glob
import os


def losses(workdir: str) -> dict[int, list[float]]:
  """Every train/loss value in `workdir`'s TensorBoard files, by step, over all runs (a
  resumed run logs again the steps after its checkpoint)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # only when read
  values = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'train/loss':
          values.setdefault(event.step, []).append(float(tf.make_ndarray(value.tensor)))
  return values
