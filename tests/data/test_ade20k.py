"""ADE20K builder on a fake ADEChallengeData2016.zip in the real layout, written at run time.

TFDS's DatasetBuilderTestCase runs the builder through both of its sources: the zip in the
manual dir, and (with the manual dir holding no zip) `dl_manager.download`, which the test
case answers with a file of its EXAMPLE_DIR. The label mapping is checked end to end through
an unpatched DownloadManager.
"""

import ast
import importlib.util
import io
import os
import pathlib
import re
import shutil
import tempfile
import time
from unittest import mock
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from psp_jax.base import errors
from psp_jax.data.builders import ade20k
from psp_jax.training import train_loop

import tiny_config

HEIGHT, WIDTH = 6, 8  # not square, so a transposed mask cannot pass
NUM_IMAGES = {'training': 3, 'validation': 2}
GRAYSCALE_STEM = 'ADE_train_00000002'  # ADE20K has a few single-channel JPEGs


def _encode(image: Image.Image, fmt: str) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def write_fake_archive(path: pathlib.Path) -> dict[str, tuple[bytes, np.ndarray]]:
  """Writes a tiny ADEChallengeData2016.zip; returns {stem: (jpeg bytes, [H, W] annotation)}."""
  rng = np.random.RandomState(0)
  written = {}
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    # The real archive has folder entries and two text files beside the images.
    for folder in ('', 'images/', 'annotations/', 'images/training/', 'images/validation/',
                   'annotations/training/', 'annotations/validation/'):
      zf.writestr(f'{ade20k.ROOT}/{folder}', b'')
    zf.writestr(f'{ade20k.ROOT}/objectInfo150.txt', 'Idx\tRatio\tTrain\tVal\tName\n')
    zf.writestr(f'{ade20k.ROOT}/sceneCategories.txt', 'ADE_train_00000001 airport\n')
    for folder, count in NUM_IMAGES.items():
      prefix = 'ADE_train' if folder == 'training' else 'ADE_val'
      for index in range(1, count + 1):
        stem = f'{prefix}_{index:08d}'
        pixels = rng.randint(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
        image = Image.fromarray(pixels)
        if stem == GRAYSCALE_STEM:
          image = image.convert('L')
        annotation = rng.randint(0, ade20k.NUM_CLASSES + 1, (HEIGHT, WIDTH)).astype(np.uint8)
        annotation[0, :3] = (0, 1, ade20k.NUM_CLASSES)  # "other" and both ends of the classes
        jpeg = _encode(image, 'JPEG')
        zf.writestr(f'{ade20k.ROOT}/images/{folder}/{stem}.jpg', jpeg)
        zf.writestr(f'{ade20k.ROOT}/annotations/{folder}/{stem}.png',
                    _encode(Image.fromarray(annotation), 'PNG'))
        written[stem] = (jpeg, annotation)
  return written


class _FakeArchive:
  """Mixin: writes the fake zip to EXAMPLE_DIR / ARCHIVE_PATH before TFDS looks at EXAMPLE_DIR."""

  DATASET_CLASS = ade20k.Ade20k
  SPLITS = {'train': NUM_IMAGES['training'], 'validation': NUM_IMAGES['validation']}
  ARCHIVE_PATH = ade20k.ARCHIVE
  EXPECTED_DOWNLOADS = set()

  @classmethod
  def setUpClass(cls):
    cls.EXAMPLE_DIR = tempfile.mkdtemp()
    archive = pathlib.Path(cls.EXAMPLE_DIR, cls.ARCHIVE_PATH)
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_fake_archive(archive)
    super().setUpClass()

  @classmethod
  def tearDownClass(cls):
    super().tearDownClass()
    shutil.rmtree(cls.EXAMPLE_DIR)

  def _download_and_prepare_as_dataset(self, builder):
    super()._download_and_prepare_as_dataset(builder)
    # The test case records every URL the builder asked for: this says which source it used.
    self.assertEqual(self._download_urls, self.EXPECTED_DOWNLOADS)


class Ade20kManualDirTest(_FakeArchive, tfds.testing.DatasetBuilderTestCase):
  # The zip sits at the top of EXAMPLE_DIR, which the test case serves as the manual dir.
  EXPECTED_DOWNLOADS = set()


class Ade20kDownloadTest(_FakeArchive, tfds.testing.DatasetBuilderTestCase):
  # No zip at the top of the manual dir: the builder downloads, answered with this file.
  ARCHIVE_PATH = os.path.join('downloaded', ade20k.ARCHIVE)
  DL_DOWNLOAD_RESULT = ARCHIVE_PATH
  EXPECTED_DOWNLOADS = {ade20k.URL}
  SKIP_CHECKSUMS = True  # the real archive's checksum is not registered

  def setUp(self):
    super().setUp()
    # The test case fakes the network (the download answers with the fake archive), so the
    # builder's reachability check of the real host is answered as the fake network would.
    patcher = mock.patch.object(ade20k, 'unreachable', return_value=None)
    patcher.start()
    self.addCleanup(patcher.stop)


def test_labels_are_reduced_and_images_kept_through_a_real_download_manager(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  written = write_fake_archive(manual_dir / ade20k.ARCHIVE)
  builder = ade20k.Ade20k(data_dir=tmp_path / 'data')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  seen = set()
  for split in ('train', 'validation'):
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      stem = example['file_name'].decode().removesuffix('.jpg')
      jpeg, annotation = written[stem]
      mask = example['segmentation_mask']
      assert mask.shape == (HEIGHT, WIDTH, 1) and mask.dtype == np.uint8
      # Written independently of reduce_zero_label: 0 -> 255, k -> k - 1.
      expected = np.where(annotation == 0, 255, annotation.astype(np.int32) - 1)
      np.testing.assert_array_equal(mask[..., 0], expected)
      assert tuple(mask[0, :3, 0]) == (255, 0, 149)
      # The JPEG's own pixels (decoders differ by rounding at most), grey spread to RGB.
      reference = np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB'), np.float32)
      assert example['image'].shape == (HEIGHT, WIDTH, 3)
      assert np.abs(example['image'] - reference).mean() < 2
      seen.add((split, stem))
  assert seen == {('train', f'ADE_train_{i:08d}') for i in (1, 2, 3)} | {
      ('validation', f'ADE_val_{i:08d}') for i in (1, 2)}


def test_reduce_zero_label_maps_other_to_ignore_and_rejects_unknown_values():
  annotation = np.array([[0, 1, 2], [75, 149, 150]], np.uint8)
  np.testing.assert_array_equal(ade20k.reduce_zero_label(annotation),
                                [[255, 0, 1], [74, 148, 149]])
  with pytest.raises(ValueError, match='151'):
    ade20k.reduce_zero_label(np.array([[3, 151]], np.uint8))


def test_missing_manual_dir_falls_back_to_download(tmp_path):
  # An unpatched DownloadManager raises on a missing manual dir; the builder must not.
  dl_manager = tfds.download.DownloadManager(
      download_dir=tmp_path, manual_dir=tmp_path / 'missing',
      manual_dir_instructions=ade20k.Ade20k.MANUAL_DOWNLOAD_INSTRUCTIONS)
  assert ade20k.manual_archive(dl_manager) is None
  (tmp_path / 'present').mkdir()
  (tmp_path / 'present' / 'unrelated.txt').write_text('')
  dl_manager = tfds.download.DownloadManager(
      download_dir=tmp_path, manual_dir=tmp_path / 'present',
      manual_dir_instructions=ade20k.Ade20k.MANUAL_DOWNLOAD_INSTRUCTIONS)
  assert ade20k.manual_archive(dl_manager) is None


def test_class_names_are_mmseg_ade20k_in_order():
  assert len(ade20k.CLASS_NAMES) == ade20k.NUM_CLASSES == len(set(ade20k.CLASS_NAMES))
  spec = importlib.util.find_spec('mmseg')
  if spec is None:
    pytest.skip('mmsegmentation (the test extra) is not installed')
  # Read mmseg's tuple from its source: importing mmseg.datasets would pull in torch.
  source = pathlib.Path(spec.origin).parent / 'datasets' / 'ade.py'
  for node in ast.walk(ast.parse(source.read_text())):
    if isinstance(node, ast.keyword) and node.arg == 'classes':
      mmseg_names = ast.literal_eval(node.value)
      break
  assert tuple(name.strip() for name in mmseg_names) == ade20k.CLASS_NAMES


# ------------------------------------------------------------------ bad input


def test_ade20k_not_prepared_says_where_its_archive_goes(tmp_path):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.dataset.update(name='ade20k', prepare=False)
  config.model.num_classes = 150
  with pytest.raises(FileNotFoundError, match=r'(?s)ade20k is not prepared.*'
                     r'put the unmodified `ADEChallengeData2016\.zip`'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))


def test_unreachable_ade20k_download_says_where_to_put_the_archive_at_once(tmp_path,
                                                                           monkeypatch):
  # A closed port refuses at once, as a host without network does; TFDS itself would retry
  # an http download for minutes.
  monkeypatch.setattr(ade20k, 'URL', 'http://127.0.0.1:1/ADEChallengeData2016.zip')
  start = time.monotonic()
  with pytest.raises(errors.InputError, match=(
      rf'^Put ADEChallengeData2016\.zip, not extracted, in '
      rf'{re.escape(str(tmp_path / "downloads" / "manual"))} .*127\.0\.0\.1:1 cannot be '
      'reached')):
    ade20k.Ade20k(data_dir=tmp_path).download_and_prepare()
  assert time.monotonic() - start < 15


def damage_member(archive, member, damaged):
  """Rewrites zip `archive` with `member`'s bytes replaced by damaged(bytes)."""
  with zipfile.ZipFile(archive) as zf:
    members = {name: zf.read(name) for name in zf.namelist()}
  assert member in members
  members[member] = damaged(members[member])
  with zipfile.ZipFile(archive, 'w') as zf:
    for name, data in members.items():
      zf.writestr(name, data)


@pytest.mark.parametrize('member, damaged, message', [
    ('images/validation/ADE_val_00000002.jpg', lambda b: b[:len(b) // 2],
     r'ADE_val_00000002\.jpg: does not decode as an image \(.*\)\. Replace it'),
    ('annotations/training/ADE_train_00000003.png', lambda b: b[:len(b) // 2],
     r'ADE_train_00000003\.png does not decode'),
    ('images/training/ADE_train_00000001.jpg', lambda b: b'not an image',
     r'ADE_train_00000001\.jpg: does not decode as an image \(cannot identify'),
])
def test_a_damaged_ade20k_file_fails_preparation_naming_it(tmp_path, member, damaged, message):
  """Preparing decodes every image and annotation once: a damaged file never reaches a
  training run, where it would stop the stream hours in."""
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  write_fake_archive(manual_dir / ade20k.ARCHIVE)
  damage_member(manual_dir / ade20k.ARCHIVE, f'{ade20k.ROOT}/{member}', damaged)
  builder = ade20k.Ade20k(data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(errors.InputError, match=message):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
