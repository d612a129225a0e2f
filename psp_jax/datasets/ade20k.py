"""ADE20K SceneParsing (MIT's ADEChallengeData2016): 150 classes, 20,210 train / 2,000 validation.

Labels are stored already reduced, as mmseg's `reduce_zero_label=True` reads them: the
annotation's 0 ("other", not one of the 150 classes) becomes 255 = ignore and class k in
1..150 becomes k - 1, so `segmentation_mask` indexes CLASS_NAMES directly.

The archive is read in place with `zipfile`, never extracted: a zip's central directory
indexes every member, so each image is paired with its annotation by name at the cost of one
seek, memory stays constant over the 20k examples, and no second ~1 GB copy lands on disk.
JPEG bytes are stored as they are in the archive (no re-encoding), so TFDS decodes the very
pixels mmseg reads.
"""

import io
import posixpath
import zipfile

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from psp_jax.datasets.features import segmentation_features
from psp_jax.losses import IGNORE_LABEL

ARCHIVE = 'ADEChallengeData2016.zip'
URL = 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'
ROOT = 'ADEChallengeData2016'  # the archive's top-level folder
NUM_CLASSES = 150

# mmseg ADE20KDataset.METAINFO['classes'] order; mmseg spells the eighth 'bed ' with a space.
CLASS_NAMES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane',
    'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant',
    'curtain', 'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea',
    'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe',
    'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pool table',
    'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase', 'blind',
    'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine',
    'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier', 'awning',
    'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track', 'apparel',
    'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike',
    'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot',
    'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen',
    'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')

# mmseg ADE20KDataset.METAINFO['palette']: one RGB colour per class, in CLASS_NAMES order.
PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),)

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
    raise ValueError(f'{source} has value {annotation.max()} > {NUM_CLASSES}: not a SceneParsing '
                     'label map (the full ADE20K release encodes classes otherwise).')
  lookup = np.full(256, IGNORE_LABEL, np.uint8)
  lookup[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
  return lookup[annotation]


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
      try:
        archive = dl_manager.download(URL)
      except OSError as error:  # requests' and urllib's errors are OSErrors
        manual_dir = self.data_dir_root / 'downloads' / 'manual'
        raise ConnectionError(
            f'{ARCHIVE} is not in the TFDS manual dir and downloading it failed ({error}). '
            f'Download it from {URL} elsewhere and put it, not extracted, in {manual_dir} '
            '(or the manual_dir of your DownloadConfig), then run the same command again.'
        ) from error
    return {split: self._generate_examples(archive, folder)
            for split, folder in _SPLIT_FOLDERS.items()}

  def _generate_examples(self, archive: epath.Path, folder: str):
    with epath.Path(archive).open('rb') as f, zipfile.ZipFile(f) as zf:
      members = set(zf.namelist())
      prefix = f'{ROOT}/images/{folder}/'
      images = sorted(n for n in members if n.startswith(prefix) and n.endswith('.jpg'))
      if not images:
        raise ValueError(f'{archive} has no {prefix}*.jpg: expected the unmodified {ARCHIVE}.')
      for image_name in images:
        stem = posixpath.splitext(posixpath.basename(image_name))[0]
        annotation_name = f'{ROOT}/annotations/{folder}/{stem}.png'
        if annotation_name not in members:
          raise ValueError(f'{archive} has {image_name} but no {annotation_name}.')
        image_bytes = zf.read(image_name)
        with Image.open(io.BytesIO(zf.read(annotation_name))) as annotation:
          label = reduce_zero_label(np.asarray(annotation), f'{archive}: {annotation_name}')
        # Only the header is parsed: a size check, not a decode.
        width, height = Image.open(io.BytesIO(image_bytes)).size
        if label.shape != (height, width):
          raise ValueError(f'{archive}: {annotation_name} is {label.shape} (a PNG that is not '
                           f'8-bit single channel?) but {image_name} is {(height, width)}.')
        yield stem, {'image': image_bytes, 'segmentation_mask': label[..., None],
                     'file_name': posixpath.basename(image_name)}
