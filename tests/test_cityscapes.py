"""Cityscapes: TFDS's own builder on archives made here in the official layout, then `decode`.

Nothing is mocked: the test writes `leftImg8bit_trainvaltest.zip` and
`gtFine_trainvaltest.zip` into a manual dir, prepares `cityscapes/semantic_segmentation`
from them as a user would, and checks the train ids that come out of `decode`.
"""

import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from psp_jax.data.builders import cityscapes

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
