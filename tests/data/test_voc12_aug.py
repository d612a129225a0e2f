"""VOC 2012 + SBD builder on fake VOCtrainval / benchmark.tgz archives written at run time.

The fake lists overlap as the real ones do: an id in VOC train and SBD train (VOC's label must
win), an id in VOC val and SBD train (must leave train_aug), ids only in SBD (their label comes
from the .mat), and a JPEG that no list names (VOC ships thousands).
"""

import io
import pathlib
import shutil
import tarfile
import tempfile

import numpy as np
from PIL import Image
import pytest
import scipy.io
import tensorflow_datasets as tfds

from psp_jax.data.builders import voc12_aug

HEIGHT, WIDTH = 5, 7  # not square, so a transposed mask cannot pass
VOC_TRAIN = ['2007_000032', '2007_000039']
VOC_VAL = ['2007_000033', '2007_000042']
SBD_TRAIN = ['2007_000039', '2008_000002', '2007_000033']  # 039 is VOC train, 033 VOC val
SBD_VAL = ['2008_000003']
UNLISTED = '2012_004331'  # a VOC JPEG in no segmentation list
TRAIN_AUG = ['2007_000032', '2007_000039', '2008_000002', '2008_000003']
# The PASCAL colour map, so the fake PNGs are palette PNGs as VOC's.
_PALETTE = [0] * 768
for _index in range(256):
  for _bit in range(8):
    for _channel in range(3):
      _PALETTE[3 * _index + _channel] |= ((_index >> (3 * _bit + _channel)) & 1) << (7 - _bit)


def _label(rng: np.random.RandomState, border: bool) -> np.ndarray:
  label = rng.randint(0, len(voc12_aug.CLASS_NAMES), (HEIGHT, WIDTH)).astype(np.uint8)
  if border:
    label[:, 3] = 255  # VOC's object borders; SBD has none
  return label


def _tar_folder(tar_path: pathlib.Path, folder: pathlib.Path, mode: str) -> None:
  with tarfile.open(tar_path, mode) as tar:
    tar.add(folder, arcname=folder.name)


def write_fake_archives(manual_dir: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
  """Writes both archives into manual_dir; returns {'voc': {id: label}, 'sbd': {id: label}}."""
  rng = np.random.RandomState(0)
  staging = pathlib.Path(tempfile.mkdtemp())
  voc = staging / 'voc' / voc12_aug.VOC_ROOT
  sbd = staging / 'sbd' / voc12_aug.SBD_ROOT
  for folder in (voc / 'JPEGImages', voc / 'SegmentationClass', voc / 'ImageSets/Segmentation',
                 sbd / 'cls', sbd / 'img'):
    folder.mkdir(parents=True)
  labels = {'voc': {}, 'sbd': {}}
  for image_id in sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL + [UNLISTED])):
    pixels = rng.randint(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    Image.fromarray(pixels).save(voc / 'JPEGImages' / f'{image_id}.jpg')
    if image_id in VOC_TRAIN + VOC_VAL:
      label = labels['voc'][image_id] = _label(rng, border=True)
      png = Image.frombytes('P', (WIDTH, HEIGHT), label.tobytes())
      png.putpalette(_PALETTE)
      png.save(voc / 'SegmentationClass' / f'{image_id}.png')
    if image_id in SBD_TRAIN + SBD_VAL:
      Image.fromarray(pixels).save(sbd / 'img' / f'{image_id}.jpg')
      label = labels['sbd'][image_id] = _label(rng, border=False)
      scipy.io.savemat(sbd / 'cls' / f'{image_id}.mat', {'GTcls': {
          'Segmentation': label, 'CategoriesPresent': np.unique(label)[1:, None]}})
  for path, ids in ((voc / 'ImageSets/Segmentation/train.txt', VOC_TRAIN),
                    (voc / 'ImageSets/Segmentation/val.txt', VOC_VAL),
                    (sbd / 'train.txt', SBD_TRAIN), (sbd / 'val.txt', SBD_VAL)):
    path.write_text(''.join(f'{image_id}\n' for image_id in ids))
  _tar_folder(manual_dir / voc12_aug.VOC_ARCHIVE, staging / 'voc' / 'VOCdevkit', 'w')
  _tar_folder(manual_dir / voc12_aug.SBD_ARCHIVE, staging / 'sbd' / 'benchmark_RELEASE', 'w:gz')
  shutil.rmtree(staging)
  return labels


class Voc12AugTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = voc12_aug.Voc12Aug
  SPLITS = {'train': len(TRAIN_AUG), 'validation': len(VOC_VAL)}

  @classmethod
  def setUpClass(cls):
    # EXAMPLE_DIR is the manual dir the test case serves; TFDS reads it only after this.
    cls.EXAMPLE_DIR = tempfile.mkdtemp()
    write_fake_archives(pathlib.Path(cls.EXAMPLE_DIR))
    super().setUpClass()

  @classmethod
  def tearDownClass(cls):
    super().tearDownClass()
    shutil.rmtree(cls.EXAMPLE_DIR)


def test_train_aug_ids_are_the_union_minus_voc_val():
  assert voc12_aug.train_aug_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL) == TRAIN_AUG


def test_labels_come_from_voc_first_then_sbd_through_a_real_download_manager(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  labels = write_fake_archives(manual_dir)
  builder = voc12_aug.Voc12Aug(data_dir=tmp_path / 'data')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  masks = {}
  for split in ('train', 'validation'):
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      assert example['image'].shape == (HEIGHT, WIDTH, 3)
      assert example['segmentation_mask'].shape == (HEIGHT, WIDTH, 1)
      masks[split, example['file_name'].decode().removesuffix('.jpg')] = (
          example['segmentation_mask'][..., 0])
  # VOC val ids leave train even when SBD lists them; unlisted JPEGs are nowhere.
  assert sorted(image_id for split, image_id in masks if split == 'train') == TRAIN_AUG
  assert sorted(image_id for split, image_id in masks if split == 'validation') == VOC_VAL
  # In both VOC and SBD: VOC's label, with its 255 border kept.
  assert not np.array_equal(labels['voc']['2007_000039'], labels['sbd']['2007_000039'])
  np.testing.assert_array_equal(masks['train', '2007_000039'], labels['voc']['2007_000039'])
  assert (masks['train', '2007_000039'][:, 3] == 255).all()
  # Only in SBD: the .mat's class map.
  for image_id in ('2008_000002', '2008_000003'):
    np.testing.assert_array_equal(masks['train', image_id], labels['sbd'][image_id])
  for image_id in VOC_VAL:
    np.testing.assert_array_equal(masks['validation', image_id], labels['voc'][image_id])


def test_colour_png_and_missing_archive_are_refused(tmp_path):
  voc, sbd = tmp_path / 'voc', tmp_path / 'sbd'
  (voc / 'SegmentationClass').mkdir(parents=True)
  Image.new('RGB', (WIDTH, HEIGHT), (128, 0, 0)).save(voc / 'SegmentationClass' / 'x.png')
  with pytest.raises(ValueError, match='palette PNG'):
    voc12_aug.read_label(voc, sbd, 'x')
  with pytest.raises(FileNotFoundError, match='neither'):
    voc12_aug.read_label(voc, sbd, 'y')
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / voc12_aug.VOC_ARCHIVE).write_bytes(b'')
  builder = voc12_aug.Voc12Aug(data_dir=tmp_path / 'data')
  with pytest.raises(FileNotFoundError, match=voc12_aug.SBD_ARCHIVE):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))
