"""Random access to the stored examples of a prepared TFDS split: example i's serialized bytes.

TFDS writes a split as TFRecord files read front to back. A training stream that can be
resumed from a position of a few bytes (input_pipeline) needs example i without reading
examples 0..i-1, so this indexes each file once, by hopping from record header to
record header (a read of 12 bytes and a seek per example, not a read of the images), and
then reads one record by its offset. Files are opened with tf.io.gfile, so a split on
GCS (a TPU pod's usual data_dir) is read the same way.

A TFRecord is [length: uint64 LE][masked CRC32C of length: uint32][data][masked CRC32C
of data: uint32].
"""

import bisect
import struct
import threading

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from psp_jax.base import errors

_HEADER = 12  # length + its CRC
_FOOTER = 4   # the data's CRC


def _record_offsets(path: str) -> np.ndarray:
  """[n, 2] int64 (offset of the data, its length) of every record in the TFRecord `path`."""
  size = tf.io.gfile.stat(path).length
  offsets, position = [], 0
  with tf.io.gfile.GFile(path, 'rb') as f:
    while position < size:
      f.seek(position)
      header = f.read(_HEADER)
      if len(header) < _HEADER:
        raise errors.InputError(f'{path} ends inside a record header at byte {position}: the '
                                'file is truncated. Delete the dataset folder and prepare '
                                'it again.')
      (length,) = struct.unpack('<Q', header[:8])
      offsets.append((position + _HEADER, length))
      position += _HEADER + length + _FOOTER
  if position != size:
    raise errors.InputError(f'{path}: its last record runs past the end of the file ({size} '
                            'bytes): the file is truncated. Delete the dataset folder and '
                            'prepare it again.')
  return np.asarray(offsets, np.int64).reshape(-1, 2)


class SplitRecords:
  """The serialized examples stored in TFRecord files `paths` of `lengths` records each,
  by index: example i is the one reading the files in order yields i-th.

  Files are indexed on first use, so a reader touches only the files its indices fall in.
  """

  def __init__(self, paths: list[str], lengths: list[int]):
    self.paths, self.lengths = [str(p) for p in paths], [int(n) for n in lengths]
    self.starts = np.cumsum([0] + self.lengths[:-1]).tolist()
    self.num_examples = sum(self.lengths)
    self._offsets: dict[int, np.ndarray] = {}
    self._index_lock = threading.Lock()
    self._local = threading.local()  # one open file per (thread, path)

  def _offsets_of(self, file: int) -> np.ndarray:
    with self._index_lock:
      if file not in self._offsets:
        offsets = _record_offsets(self.paths[file])
        if len(offsets) != self.lengths[file]:
          raise errors.InputError(
              f'{self.paths[file]} holds {len(offsets)} records, but the dataset info says '
              f'{self.lengths[file]}: the folder was changed after it was prepared. Delete it '
              'and prepare it again.')
        self._offsets[file] = offsets
      return self._offsets[file]

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> bytes:
    """The serialized tf.train.Example of example `index` (0 <= index < len(self))."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f'example {index} of {self.num_examples}')
    file = bisect.bisect_right(self.starts, index) - 1
    offset, length = self._offsets_of(file)[index - self.starts[file]]
    handles = self._local.__dict__.setdefault('handles', {})
    if file not in handles:
      handles[file] = tf.io.gfile.GFile(self.paths[file], 'rb')
    handle = handles[file]
    handle.seek(int(offset))
    return handle.read(int(length))

  def read(self, index: tf.Tensor) -> tf.Tensor:
    """`self[index]` as a TF op inside tf.data: scalar int64 -> scalar string."""
    serialized = tf.numpy_function(lambda i: self[i], [index], tf.string, stateful=False)
    return tf.ensure_shape(serialized, [])


def split_records(builder: tfds.core.DatasetBuilder, split: str) -> SplitRecords:
  """The examples of `split` of a prepared `builder`, example i the one
  `builder.as_dataset(split, shuffle_files=False)` yields i-th."""
  file_format = builder.info.file_format
  if file_format is not None and file_format != tfds.core.FileFormat.TFRECORD:
    raise errors.InputError(
        f'{builder.info.full_name} is stored as {file_format.value}; the training stream '
        'reads TFRecord files by offset. Prepare it with the default file format.')
  info = builder.info.splits[split]
  return SplitRecords(info.filepaths, info.shard_lengths)
