"""Your own images and label maps, in mmseg's folder layout, prepared as a TFDS dataset.

  ROOT/images/train/NAME.jpg        ROOT/annotations/train/NAME.png
  ROOT/images/val/NAME.jpg          ROOT/annotations/val/NAME.png
  ROOT/classes.json (optional)      {"classes": [...], "palette": [[r, g, b], ...]}

Suffixes and `reduce_zero_label` are mmseg BaseSegDataset's (config.dataset); class names
come from the config or classes.json (psp_jax.data.classes.read_folder). Preparing writes our own
format (features.py) under data_dir/folder/<config name>/, where the config name is a
hash of the settings and of the files' names, sizes and times: a changed folder is
prepared again, an unchanged one once. Every image and label is read while preparing, so
a bad file stops preparation, named, before any training starts.

Label maps: palette PNGs ('P') and grey PNGs are class ids; RGB(A) label maps are mapped
through the palette, and a colour outside it is an error. Images in any mode PIL reads
(L, LA, RGBA, P, CMYK, 16-bit) become RGB, with EXIF orientation applied; the label map
must then have the rotated size.
"""

import dataclasses
import hashlib
import io
import json
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from psp_jax.base import errors, images, spec
from psp_jax.data.features import segmentation_features

# Folder under images/ and annotations/ -> TFDS split.
SPLITS = {'train': 'train', 'val': 'validation'}
_ORIENTATION = 0x0112  # the EXIF tag


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  root: str = ''
  img_suffix: str = '.jpg'
  seg_map_suffix: str = '.png'
  reduce_zero_label: bool = False
  num_classes: int = 0
  palette: tuple = ()


def _listing(folder: str, suffix: str) -> dict[str, str]:
  """NAME -> path of the files in `folder` ending in `suffix` (NAME without it)."""
  if not os.path.isdir(folder):
    raise errors.InputError(f'{folder} is not a folder: a folder dataset holds '
                            'images/{train,val}/ and annotations/{train,val}/ (configs/folder.py).')
  return {name[:-len(suffix)]: os.path.join(folder, name) for name in sorted(os.listdir(folder))
          if name.endswith(suffix) and len(name) > len(suffix)}


def pairs(root: str, folder: str, img_suffix: str, seg_map_suffix: str) -> list[tuple[str, str]]:
  """(image, label) paths of split `folder`; an image without a label or the reverse is an error."""
  images = _listing(os.path.join(root, 'images', folder), img_suffix)
  labels = _listing(os.path.join(root, 'annotations', folder), seg_map_suffix)
  if not images:
    where = os.path.join(root, 'images', folder)
    others = sorted({os.path.splitext(n)[1] for n in os.listdir(where) if '.' in n})
    raise errors.InputError(
        f'{where} has no *{img_suffix} image' + (
            f' (it holds {", ".join(others)}: set config.dataset.img_suffix to the images\' '
            'suffix).' if others else ': it is empty; put the split\'s images there.'))
  for missing, have, kind in ((set(images) - set(labels), images, 'label'),
                              (set(labels) - set(images), labels, 'image')):
    if missing:
      names = [have[name] for name in sorted(missing)]
      raise errors.InputError(
          f'{names[0]} has no {kind} ({len(names)} file(s) so: {", ".join(names[:5])}'
          f'{" ..." if len(names) > 5 else ""}). Each image needs the label map of the same '
          f'name in annotations/{folder}/ ({seg_map_suffix}) and each label map its image '
          f'in images/{folder}/ ({img_suffix}).')
  return [(images[name], labels[name]) for name in sorted(images)]


def config_for(root: str, img_suffix: str, seg_map_suffix: str, reduce_zero_label: bool,
               num_classes: int, palette) -> FolderConfig:
  """The FolderConfig of config.dataset's folder settings, with `num_classes` and the
  `palette` its RGB label maps are painted in (or ()); its name changes with the settings
  and the files, which are listed and stat-ed here."""
  if not root:
    raise errors.InputError("config.dataset.name='folder' needs --config.dataset.root=DIR, the "
                            'folder that holds images/ and annotations/.')
  root = os.path.abspath(root)
  listing = []
  for folder in SPLITS:
    for image, label in pairs(root, folder, img_suffix, seg_map_suffix):
      listing += [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns)
                  for path in (image, label)]
  settings = [root, img_suffix, seg_map_suffix, bool(reduce_zero_label), num_classes,
              [list(c) for c in palette], listing]
  digest = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:12]
  return FolderConfig(name=f'f{digest}', description=f'{root} as of preparation', root=root,
                      img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                      reduce_zero_label=bool(reduce_zero_label), num_classes=num_classes,
                      palette=tuple(map(tuple, palette)))


def read_image(path: str) -> tuple[bytes | np.ndarray, tuple[int, int]]:
  """(what to store, (height, width)): a plain RGB JPEG's own bytes (mmseg decodes the
  same pixels), else the RGB pixels after EXIF orientation."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if (image.format == 'JPEG' and image.mode == 'RGB'
          and image.getexif().get(_ORIENTATION, 1) == 1):
        return data, (image.height, image.width)
      pixels = images.to_rgb(image)
  except OSError as error:
    raise errors.InputError(f'{path}: not a readable image ({error}).') from error
  return pixels, pixels.shape[:2]


def read_label(path: str, num_classes: int, palette, reduce_zero_label: bool) -> np.ndarray:
  """[H, W] uint8 class ids, 255 = ignore; an error naming `path` for anything else."""
  try:
    with Image.open(path) as image:
      mode = image.mode
      if mode in ('RGB', 'RGBA'):
        rgb = np.asarray(image.convert('RGB'), np.int64)
      else:  # 'P' (palette PNG: its indices), 'L', 'LA', 16-bit grey: the values
        label = np.asarray(image.getchannel(0) if mode == 'LA' else image, np.int64)
  except OSError as error:
    raise errors.InputError(f'{path}: not a readable label map ({error}).') from error
  if mode in ('RGB', 'RGBA'):
    if not palette:
      raise errors.InputError(f'{path} is an RGB label map, but no palette says which colour is '
                              'which class: give config.dataset.palette or "palette" in '
                              'classes.json, or store class ids (palette or grey PNG).')
    codes = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
    table = np.array([r << 16 | g << 8 | b for r, g, b in palette])
    order = np.argsort(table)
    index = np.searchsorted(table[order], codes).clip(0, len(table) - 1)
    known = table[order][index] == codes
    if not known.all():
      colours = [(int(c >> 16) & 255, int(c >> 8) & 255, int(c) & 255)
                 for c in np.unique(codes[~known])]
      raise errors.InputError(
          f'{path}: colours {colours[:10]}{" ..." if len(colours) > 10 else ""} are not in the '
          f'palette of the {len(palette)} classes; paint every pixel in a class colour.')
    return order[index].astype(np.uint8)
  if reduce_zero_label:  # mmseg: 0 -> 255, k -> k - 1 (255 stays 255)
    label = np.where(label == 0, 256, label) - 1
    label[label == 254] = spec.IGNORE_LABEL
  bad = np.unique(label[(label >= num_classes) & (label != spec.IGNORE_LABEL) | (label < 0)])
  if bad.size:
    raise errors.InputError(
        f'{path}: label values {bad[:20].tolist()} are neither class ids in [0, {num_classes})'
        f' nor the ignore label 255{" (after reduce_zero_label)" if reduce_zero_label else ""}.')
  return label.astype(np.uint8)


class Folder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ROOT/images and ROOT/annotations as psp_jax's own format (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'mmseg BaseSegDataset folder layout.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=segmentation_features(),
                                          supervised_keys=('image', 'segmentation_mask'),
                                          description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {split: self._generate_examples(pairs(config.root, folder, config.img_suffix,
                                                 config.seg_map_suffix))
            for folder, split in SPLITS.items()}

  def _generate_examples(self, split_pairs):
    config = self.builder_config
    values = set()
    for image_path, label_path in split_pairs:
      image, size = read_image(image_path)
      label = read_label(label_path, config.num_classes, config.palette,
                         config.reduce_zero_label)
      values.update(np.unique(label).tolist())
      if label.shape != size:
        raise errors.InputError(
            f'{label_path} is {label.shape[0]}x{label.shape[1]} (height x width) but '
            f'{image_path} is {size[0]}x{size[1]}'
            f'{" after its EXIF orientation" if isinstance(image, np.ndarray) else ""}.')
      name = os.path.relpath(image_path, config.root)
      yield name, {'image': image, 'segmentation_mask': label[..., None], 'file_name': name}
    check_binary_masks(values, config.num_classes, os.path.dirname(split_pairs[0][1]))


def check_binary_masks(values: set[int], num_classes: int, folder: str) -> None:
  """Binary masks saved as 0/255 (a common export) read as background and ignore, so the
  foreground would never be learnt: refused, naming the fix."""
  if num_classes == 2 and spec.IGNORE_LABEL in values and values <= {0, spec.IGNORE_LABEL}:
    raise errors.InputError(
        f'{folder}: every label map holds only 0 and 255, and 255 means ignore, so class 1 '
        'would never be learnt. Binary masks saved as 0/255? Re-save them with 1 for the '
        'foreground (e.g. Image.fromarray((np.asarray(mask) // 255).astype(np.uint8))).')
