"""ADE20K SceneParsing (MIT's ADEChallengeData2016): 150 classes, 20,210 train / 2,000 validation.

Labels are stored already reduced, as mmseg's `reduce_zero_label=True` reads them: the
annotation's 0 ("other", not one of the 150 classes) becomes 255 = ignore and class k in
1..150 becomes k - 1, so `segmentation_mask` indexes CLASS_NAMES directly.

The archive is read in place with `zipfile`, never extracted: a zip's central directory
indexes every member, so each image is paired with its annotation by name at the cost of one
seek, memory stays constant over the 20k examples, and no second ~1 GB copy lands on disk.
JPEG bytes are stored as they are in the archive (no re-encoding), so TFDS decodes the very
pixels mmseg reads. Each image and annotation is decoded once while preparing, so a damaged
file or a label out of range fails preparation naming it, never a training run later.
"""

import io
import posixpath
import socket
import urllib.parse
import zipfile

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from psp_jax.base import errors, images
from psp_jax.base.spec import IGNORE_LABEL
from psp_jax.data import catalog
from psp_jax.data.features import segmentation_features

(ARCHIVE,) = catalog.ADE20K.manual  # where the URL cannot be reached
URL = 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'
ROOT = 'ADEChallengeData2016'  # the archive's top-level folder
NUM_CLASSES = 150

CLASS_NAMES = catalog.ADE20K.class_names

# Split name in TFDS -> folder name inside the archive.
_SPLIT_FOLDERS = {'train': 'training', 'validation': 'validation'}


def reduce_zero_label(annotation: np.ndarray, source: str = 'annotation') -> np.ndarray:
  """mmseg's reduce_zero_label on an ADE annotation: 0 -> 255, k -> k - 1 for k in 1..150.

  Args:
    annotation: [H, W] uint8 as stored in the archive's PNGs, values 0..150.
    source: where it came from, for the error on a value above 150.
  Returns:
    [H, W] uint8 class indices 0..149, 255 = ignore.
  """
  annotation = np.asarray(annotation)
  if annotation.size and annotation.max() > NUM_CLASSES:
    raise errors.InputError(f'{source} has value {annotation.max()} > {NUM_CLASSES}: not a '
                            'SceneParsing label map (the full ADE20K release encodes classes '
                            'otherwise).')
  lookup = np.full(256, IGNORE_LABEL, np.uint8)
  lookup[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
  return lookup[annotation]


def unreachable(url: str, timeout: float = 10.0) -> str | None:
  """Why `url`'s host cannot be connected to within `timeout` seconds, or None if it can."""
  parts = urllib.parse.urlsplit(url)
  port = parts.port or {'https': 443, 'ftp': 21}.get(parts.scheme, 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=timeout).close()
  except OSError as error:
    return f'{parts.hostname}:{port} cannot be reached ({error})'
  return None


def manual_archive(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
  """The zip in the manual dir if the user put it there, else None (then it is downloaded)."""
  try:
    manual_dir = dl_manager.manual_dir
  except AssertionError:  # TFDS's way of saying the manual dir is missing or empty
    return None
  archive = manual_dir / ARCHIVE
  return archive if archive.exists() else None


class Ade20k(tfds.core.GeneratorBasedBuilder):
  """ADE20K SceneParsing with mmseg's reduced labels (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'SceneParsing 150 classes, labels reduced (0 -> 255, k -> k - 1).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Optional. Without it the archive is downloaded from {URL}.
  Where that host cannot be reached, put the unmodified `{ARCHIVE}` (about 1 GB,
  the MIT SceneParsing benchmark) directly in the TFDS manual dir, by default
  `~/tensorflow_datasets/downloads/manual/{ARCHIVE}` (or the folder given as
  `tfds.download.DownloadConfig(manual_dir=...)`). Do not extract it.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=segmentation_features(),
        supervised_keys=('image', 'segmentation_mask'),
        homepage='http://sceneparsing.csail.mit.edu/',
        description=__doc__,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    archive = manual_archive(dl_manager)
    if archive is None:
      manual_dir = self.data_dir_root / 'downloads' / 'manual'
      instruction = (f'Put {ARCHIVE}, not extracted, in {manual_dir} (or the manual_dir of '
                     f'your DownloadConfig) and run the same command again; get it from {URL}.')
      # TFDS retries an unreachable host for minutes: ask the host once, briefly, first.
      reason = unreachable(URL)
      if reason:
        raise errors.InputError(f'{instruction} ({ARCHIVE} is not there, and {reason}.)')
      try:
        archive = dl_manager.download(URL)
      except OSError as error:  # requests' and urllib's errors are OSErrors
        raise errors.InputError(f'{instruction} (Downloading it failed: {error}.)') from error
    return {split: self._generate_examples(archive, folder)
            for split, folder in _SPLIT_FOLDERS.items()}

  def _generate_examples(self, archive: epath.Path, folder: str):
    with epath.Path(archive).open('rb') as f, zipfile.ZipFile(f) as zf:
      members = set(zf.namelist())
      prefix = f'{ROOT}/images/{folder}/'
      image_names = sorted(n for n in members if n.startswith(prefix) and n.endswith('.jpg'))
      if not image_names:
        raise errors.InputError(
            f'{archive} has no {prefix}*.jpg: expected the unmodified {ARCHIVE}.')
      for image_name in image_names:
        stem = posixpath.splitext(posixpath.basename(image_name))[0]
        annotation_name = f'{ROOT}/annotations/{folder}/{stem}.png'
        if annotation_name not in members:
          raise errors.InputError(f'{archive} has {image_name} but no {annotation_name}.')
        image_bytes = zf.read(image_name)
        try:
          with Image.open(io.BytesIO(zf.read(annotation_name))) as annotation:
            annotation = np.asarray(annotation)
        except OSError as error:
          raise errors.InputError(f'{archive}: {annotation_name} does not decode ({error}): '
                                  'replace the archive with an intact copy.') from error
        label = reduce_zero_label(annotation, f'{archive}: {annotation_name}')
        height, width = images.decoded_size(image_bytes, f'{archive}: {image_name}')
        if label.shape != (height, width):
          raise errors.InputError(
              f'{archive}: {annotation_name} is {label.shape} (a PNG that is not 8-bit single '
              f'channel?) but {image_name} is {(height, width)}.')
        yield stem, {'image': image_bytes, 'segmentation_mask': label[..., None],
                     'file_name': posixpath.basename(image_name)}
