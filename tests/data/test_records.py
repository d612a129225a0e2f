"""Stored examples by index: the bytes TFRecord files hold, found by offset."""

import pytest
import tensorflow as tf

from psp_jax.base import errors
from psp_jax.data import records


def _write(path, payloads):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for payload in payloads:
      writer.write(payload)
  return str(path)


def test_records_by_index_across_files_are_what_tf_reads_in_order(tmp_path):
  # Lengths of 0, 1 and > 255 bytes exercise the little-endian length header.
  first = [b'', b'a', b'x' * 300, b'\x00\xff' * 40]
  second = [b'second-%d' % i * (i + 1) for i in range(5)]
  paths = [_write(tmp_path / 'a.tfrecord', first), _write(tmp_path / 'b.tfrecord', second)]
  stored = records.SplitRecords(paths, [4, 5])
  expected = [r.numpy() for r in tf.data.TFRecordDataset(paths)]
  assert len(stored) == 9 and expected == first + second
  assert [stored[i] for i in range(9)] == expected
  assert [stored[i] for i in (8, 0, 5, 2)] == [expected[i] for i in (8, 0, 5, 2)]
  with pytest.raises(IndexError):
    stored[9]


def test_a_truncated_or_changed_file_is_named(tmp_path):
  path = _write(tmp_path / 'a.tfrecord', [b'x' * 100, b'y' * 100])
  with pytest.raises(errors.InputError, match=r'a\.tfrecord holds 2 records, but the dataset '
                                               r'info says 3'):
    records.SplitRecords([path], [3])[0]
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:-10])
  with pytest.raises(errors.InputError, match=r'a\.tfrecord: its last record runs past the end'):
    records.SplitRecords([path], [2])[0]


def test_a_prepared_split_reads_as_tfds_reads_it(tmp_path):
  from psp_jax.data.builders import synthetic_scenes
  builder = synthetic_scenes.SyntheticScenes(config='tiny', data_dir=str(tmp_path))
  builder.download_and_prepare()
  stored = records.split_records(builder, 'validation')
  features = builder.info.features
  expected = list(builder.as_dataset(split='validation', shuffle_files=False))
  assert len(stored) == len(expected) > 1
  for i, example in enumerate(expected):
    got = features.deserialize_example(stored[i])
    tf.debugging.assert_equal(got['segmentation_mask'], example['segmentation_mask'])
    tf.debugging.assert_equal(got['image'], example['image'])
