"""Cityscapes: TFDS's own builder on archives made here in the official layout, then `decode`.

Nothing is mocked: the test writes `leftImg8bit_trainvaltest.zip` and
`gtFine_trainvaltest.zip` into a manual dir, prepares `cityscapes/semantic_segmentation`
from them as a user would, and checks the train ids that come out of `decode`.
"""

import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from psp_jax.base import errors
from psp_jax.data import catalog
from psp_jax.data.builders import cityscapes
from psp_jax.data.dataset import Dataset
from psp_jax.training import train_loop

import tiny_config
from test_ade20k import damage_member

# Label id -> train id, transcribed from cityscapesScripts' labels.py; every other id -> 255.
EXPECTED_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                      23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34  # ids 0..33 occur in *_gtFine_labelIds.png
# The builder declares this shape: smaller PNGs are prepared without complaint (TFDS stores
# the files' bytes), then reading them fails with "Incompatible shapes".
HEIGHT, WIDTH = 1024, 2048
BAND = 60  # pixels per label id band; 34 * 60 < 2048

# (split directory, city, sequence number); the sequence number k keys the content.
FRAMES = (('train', 'aachen', 0), ('train', 'aachen', 1), ('train', 'bochum', 2),
          ('val', 'frankfurt', 3), ('test', 'berlin', 4))


def fake_frame(k: int) -> tuple[np.ndarray, np.ndarray]:
  """Frame k: (image [H, W, 3] uint8, label ids [H, W, 1] uint8).

  The label is vertical bands of every id 0..33, rotated by k so that frames differ
  and a label paired with the wrong image is caught; the last columns are id 0.
  """
  image = np.full((HEIGHT, WIDTH, 3), (40 * k, 40 * k + 1, 40 * k + 2), np.uint8)
  label = np.zeros((HEIGHT, WIDTH, 1), np.uint8)
  bands = (np.arange(NUM_LABEL_IDS) + k) % NUM_LABEL_IDS
  label[:, :NUM_LABEL_IDS * BAND, 0] = np.repeat(bands, BAND)[None]
  return image, label


def expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
  table = np.full(256, 255, np.uint8)
  table[list(EXPECTED_TRAIN_IDS)] = list(EXPECTED_TRAIN_IDS.values())
  return table[label_ids]


def write_archives(manual_dir) -> None:
  """The two official zips, with the folder layout of the cityscapes-dataset.com downloads."""
  with zipfile.ZipFile(manual_dir / 'leftImg8bit_trainvaltest.zip', 'w') as images, \
       zipfile.ZipFile(manual_dir / 'gtFine_trainvaltest.zip', 'w') as labels:
    for split, city, k in FRAMES:
      image, label = fake_frame(k)
      stem = f'{city}_{k:06d}_000019'
      images.writestr(f'leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png',
                      tf.io.encode_png(image).numpy())
      labels.writestr(f'gtFine/{split}/{city}/{stem}_gtFine_labelIds.png',
                      tf.io.encode_png(label).numpy())


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  manual_dir = tmp_path_factory.mktemp('manual')
  write_archives(manual_dir)
  builder = tfds.builder(cityscapes.TFDS_NAME, data_dir=tmp_path_factory.mktemp('tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return builder


def test_table_is_cityscapes_train_ids():
  table = cityscapes.ID_TO_TRAIN_ID
  assert table.shape == (256,) and table.dtype == np.uint8
  np.testing.assert_array_equal(table, expected_train_ids(np.arange(256)))
  assert len(cityscapes.CLASS_NAMES) == len(EXPECTED_TRAIN_IDS) == 19
  assert cityscapes.CLASS_NAMES[table[26]] == 'car'
  assert cityscapes.CLASS_NAMES[table[33]] == 'bicycle'


def test_tfds_builder_reads_the_official_archives(builder):
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      'train': 3, 'validation': 1, 'test': 1}
  features = builder.info.features
  assert features['image_left'].shape == (HEIGHT, WIDTH, 3)
  assert features['segmentation_label'].shape == (HEIGHT, WIDTH, 1)
  assert features['segmentation_label'].dtype == np.uint8


def test_decode_maps_label_ids_to_train_ids(builder):
  seen = set()
  for split in ('train', 'validation', 'test'):
    ds = builder.as_dataset(split=split).map(lambda ex: (ex, cityscapes.decode(ex)))
    for example, (image, label) in tfds.as_numpy(ds):
      k = int(example['image_id'].decode().split('_')[1])
      seen.add(k)
      want_image, label_ids = fake_frame(k)
      # TFDS stores the label ids as they are in the PNG.
      np.testing.assert_array_equal(example['segmentation_label'], label_ids)
      np.testing.assert_array_equal(image, want_image)
      assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
      assert label.dtype == np.uint8 and label.shape == (HEIGHT, WIDTH, 1)
      np.testing.assert_array_equal(label, expected_train_ids(label_ids))
      # Spot checks in the band of each label id: road, car, bicycle, unlabeled, caravan.
      for label_id, train_id in ((7, 0), (26, 13), (33, 18), (0, 255), (29, 255)):
        assert label[0, BAND * ((label_id - k) % NUM_LABEL_IDS), 0] == train_id, label_id
  assert seen == {k for _, _, k in FRAMES}


# ------------------------------------------------------------------ bad input


def _cityscapes_config(data_dir=None):
  dataset = tiny_config.for_run(data_dir, steps=2).dataset
  dataset.update(name=cityscapes.TFDS_NAME, prepare=True)
  return dataset


def test_cityscapes_labels_are_checked_after_mapping_ids_to_train_ids():
  label_ids = np.full((4, 6, 1), 33, np.uint8)  # bicycle's id: 33 >= 19, train id 18
  label_ids[0, 0] = 0  # unlabeled -> 255
  example = {'image_left': tf.zeros((4, 6, 3), tf.uint8), 'segmentation_label': label_ids,
             'image_id': tf.constant('aachen_000000_000019')}
  decode = Dataset(_cityscapes_config()).decode
  _, label = decode(example)
  assert label.numpy()[0, 0, 0] == 255 and (label.numpy()[1:] == 18).all()
  example['image_left'] = tf.zeros((4, 5, 3), tf.uint8)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'aachen_000000_000019: label size \[4 6\] differs'):
    decode(example)


def _write_cityscapes_archives(manual_dir, corrupt):
  """The two official zips: 4 train frames (one per simulated device), 1 val, 1 test frame;
  the image of frame `corrupt` is cut short."""
  manual_dir.mkdir(parents=True)
  with zipfile.ZipFile(manual_dir / catalog.CITYSCAPES.manual[0], 'w') as images, \
       zipfile.ZipFile(manual_dir / catalog.CITYSCAPES.manual[1], 'w') as labels:
    for k, split in enumerate(('train',) * 4 + ('val', 'test')):
      image, label = fake_frame(k)
      stem = f'aachen_{k:06d}_000019'
      png = tf.io.encode_png(image).numpy()
      images.writestr(f'leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png',
                      png[:len(png) // 2] if k == corrupt else png)
      labels.writestr(f'gtFine/{split}/aachen/{stem}_gtFine_labelIds.png',
                      tf.io.encode_png(label).numpy())


def test_corrupt_image_fails_preparation_naming_the_file(tmp_path):
  # TFDS's Cityscapes builder stores the PNGs as they come: train.py decodes every example
  # once right after preparing, before any training step.
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.dataset.name = cityscapes.TFDS_NAME
  config.model.num_classes = 19
  _write_cityscapes_archives(tmp_path / 'tfds' / 'downloads' / 'manual', corrupt=0)
  with pytest.raises(errors.InputError, match=(
      r'cityscapes/semantic_segmentation/1\.0\.0: 1 stored image\(s\) would stop training: '
      r'train: aachen_000000_000019 \(image_left\)\. Replace the damaged')):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  # Deleted, so the next run prepares and checks it again instead of training on it.
  assert not tfds.builder(cityscapes.TFDS_NAME, data_dir=str(tmp_path / 'tfds')).is_prepared()
  assert not os.listdir(tmp_path / 'workdir' / 'checkpoints')  # no step was trained


def test_cityscapes_label_of_another_size_fails_preparation(tmp_path):
  """TFDS's Cityscapes features declare 1024x2048: a label map of another size is stored
  unread, and decoding it (as training would) fails."""
  manual_dir = tmp_path / 'tfds' / 'downloads' / 'manual'
  _write_cityscapes_archives(manual_dir, corrupt=None)
  damage_member(manual_dir / catalog.CITYSCAPES.manual[1],
          'gtFine/val/aachen/aachen_000004_000019_gtFine_labelIds.png',
          lambda _: tf.io.encode_png(fake_frame(4)[1][:, :-8]).numpy())  # 8 columns short
  data = Dataset(_cityscapes_config(str(tmp_path / 'tfds')))
  with pytest.raises(errors.InputError, match=r'1 stored image\(s\) would stop training: '
                     r'validation: aachen_000004_000019 \(segmentation_label\)\.'):
    data.prepare()
