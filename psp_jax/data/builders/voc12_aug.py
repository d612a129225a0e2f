"""PASCAL VOC 2012 with SBD's extra labels ("aug"): 21 classes, 10,582 train / 1,449 validation.

'train' is the standard train_aug list, (SBD train | SBD val | VOC train) - VOC val. An image's
label is VOC's SegmentationClass PNG where VOC has one, else SBD's `cls/<id>.mat`: mmseg's
SegmentationClassAug concatenated with VOC train, and semseg's train_aug. 'validation' is VOC
2012 val. Class 0 is background; VOC's object borders and void stay 255 = ignore (SBD has none).

Both archives are read from the manual dir and extracted once with `dl_manager.extract`, which
TFDS keeps under `downloads/extracted/` and reuses on the next build. Unlike ADE20K's zip, a tar
has no index: pairing a VOC image with a label that may sit in the other archive would take a
scan of the whole tar per lookup, or every label of a split held in memory, when streaming.
Each image and label is decoded once while preparing, so a damaged file or a label out of
range fails preparation naming it, never a training run later.
"""

from etils import epath
import numpy as np
from PIL import Image
import scipy.io
import tensorflow_datasets as tfds

from psp_jax.base import errors, images
from psp_jax.base.spec import IGNORE_LABEL
from psp_jax.data import catalog
from psp_jax.data.features import segmentation_features

VOC_ARCHIVE, SBD_ARCHIVE = catalog.VOC12_AUG.manual
VOC_ROOT = 'VOCdevkit/VOC2012'  # inside VOC_ARCHIVE
SBD_ROOT = 'benchmark_RELEASE/dataset'  # inside SBD_ARCHIVE

CLASS_NAMES = catalog.VOC12_AUG.class_names


def read_ids(path: epath.Path) -> list[str]:
  """Image ids of one split list (one id per line, as both VOC and SBD write them)."""
  return [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()]


def train_aug_ids(voc_train, voc_val, sbd_train, sbd_val) -> list[str]:
  """The standard train_aug ids, sorted: every labelled image not in VOC val (10,582)."""
  return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def read_label(voc_dir: epath.Path, sbd_dir: epath.Path, image_id: str) -> np.ndarray:
  """The class map of one image: VOC's where it exists, else SBD's.

  Args:
    voc_dir: the extracted `VOCdevkit/VOC2012`. sbd_dir: the extracted
      `benchmark_RELEASE/dataset`. image_id: e.g. '2008_000002'.
  Returns:
    [H, W] uint8 class ids 0..20, 255 on VOC's borders and void.
  """
  voc_png = voc_dir / 'SegmentationClass' / f'{image_id}.png'
  if voc_png.exists():
    try:
      with voc_png.open('rb') as f, Image.open(f) as png:
        # A palette PNG: its pixel indices are the class ids (RGB would be the colours).
        mode, label, source = png.mode, np.array(png), voc_png
    except OSError as error:
      raise errors.InputError(f'{voc_png} does not decode ({error}): replace it with the '
                              'unmodified file.') from error
    if mode not in ('P', 'L'):
      raise errors.InputError(f'{voc_png} is a {mode} PNG; expected VOC\'s palette PNG whose '
                              'indices are class ids. Use the unmodified SegmentationClass.')
  else:
    sbd_mat = sbd_dir / 'cls' / f'{image_id}.mat'
    if not sbd_mat.exists():
      raise FileNotFoundError(f'{image_id} is listed but has neither {voc_png} nor {sbd_mat}.')
    with sbd_mat.open('rb') as f:
      gt = scipy.io.loadmat(f, squeeze_me=True, struct_as_record=False)['GTcls']
    label, source = np.asarray(gt.Segmentation), sbd_mat
  bad = np.setdiff1d(label, np.r_[0:len(CLASS_NAMES), IGNORE_LABEL])
  if label.ndim != 2 or bad.size:
    raise errors.InputError(f'{source}: expected a [H, W] map of 0..20 and 255, got shape '
                            f'{label.shape} with values {bad[:5].tolist()}.')
  return label.astype(np.uint8)


class Voc12Aug(tfds.core.GeneratorBasedBuilder):
  """PASCAL VOC 2012 + SBD train_aug (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'train_aug (VOC label where present, else SBD) and VOC val.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Put both archives, unmodified and not extracted, directly in the TFDS manual dir, by
  default `~/tensorflow_datasets/downloads/manual/` (or the folder given as
  `tfds.download.DownloadConfig(manual_dir=...)`):
    {VOC_ARCHIVE}  PASCAL VOC 2012 trainval, from
      http://host.robots.ox.ac.uk/pascal/VOC/voc2012/{VOC_ARCHIVE}
    {SBD_ARCHIVE}  the Semantic Boundaries Dataset, from
      http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=segmentation_features(),
        supervised_keys=('image', 'segmentation_mask'),
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
        description=__doc__,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir  # raises with the instructions above if missing
    archives = {'voc': manual_dir / VOC_ARCHIVE, 'sbd': manual_dir / SBD_ARCHIVE}
    for archive in archives.values():
      if not archive.exists():
        raise FileNotFoundError(f'{archive} not found.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    extracted = dl_manager.extract(archives)
    voc_dir, sbd_dir = extracted['voc'] / VOC_ROOT, extracted['sbd'] / SBD_ROOT
    voc_lists = voc_dir / 'ImageSets' / 'Segmentation'
    train = train_aug_ids(read_ids(voc_lists / 'train.txt'), read_ids(voc_lists / 'val.txt'),
                          read_ids(sbd_dir / 'train.txt'), read_ids(sbd_dir / 'val.txt'))
    return {
        'train': self._generate_examples(voc_dir, sbd_dir, train),
        'validation': self._generate_examples(voc_dir, sbd_dir, read_ids(voc_lists / 'val.txt')),
    }

  def _generate_examples(self, voc_dir: epath.Path, sbd_dir: epath.Path, image_ids):
    for image_id in image_ids:
      # SBD's img/ holds the same JPEGs; VOC's are used so both splits share one source.
      image_path = voc_dir / 'JPEGImages' / f'{image_id}.jpg'
      image_bytes = image_path.read_bytes()
      label = read_label(voc_dir, sbd_dir, image_id)
      height, width = images.decoded_size(image_bytes, str(image_path))
      if label.shape != (height, width):
        raise errors.InputError(f'{image_id}: label is {label.shape} but {image_path} is '
                                f'{(height, width)}.')
      yield image_id, {'image': image_bytes, 'segmentation_mask': label[..., None],
                       'file_name': f'{image_id}.jpg'}
