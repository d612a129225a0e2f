"""Class names and colour palettes, without TensorFlow: the known datasets' (rows of
psp_jax.data.catalog), and a folder dataset's, from its config or its classes.json.
"""

import functools
import json
import os

import numpy as np

from psp_jax.base import errors

# mmseg ADE20KDataset.METAINFO['classes'] order; mmseg spells the eighth 'bed ' with a space.
ADE20K_CLASS_NAMES = (
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

# mmseg ADE20KDataset.METAINFO['palette']: one RGB colour per class, in ADE20K_CLASS_NAMES order.
ADE20K_PALETTE = (
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

VOC_CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor')


def _voc_palette(count: int) -> tuple[tuple[int, int, int], ...]:
  """The VOC devkit colour map (bitget interleaving of the class id), class 0 black."""
  colours = []
  for index in range(count):
    r = g = b = 0
    for bit in range(8):
      r |= ((index >> 0) & 1) << (7 - bit)
      g |= ((index >> 1) & 1) << (7 - bit)
      b |= ((index >> 2) & 1) << (7 - bit)
      index >>= 3
    colours.append((r, g, b))
  return tuple(colours)


VOC_PALETTE = _voc_palette(len(VOC_CLASS_NAMES))

# Train-id order, as cityscapesScripts' labels.py and mmseg's CityscapesDataset.
CITYSCAPES_CLASS_NAMES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                          'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
                          'truck', 'bus', 'train', 'motorcycle', 'bicycle')

# cityscapesScripts labels.py colours of the 19 train ids, in CITYSCAPES_CLASS_NAMES order.
CITYSCAPES_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                      (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                      (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                      (0, 80, 100), (0, 0, 230), (119, 11, 32))

# psp_jax.data.builders.synthetic_scenes, the embedded default.
SCENES_CLASS_NAMES = ('sky', 'building', 'water', 'road', 'quay', 'sidewalk', 'boat', 'car',
                      'buoy', 'bollard')
SCENES_PALETTE = ((70, 130, 180), (70, 70, 70), (0, 60, 200), (128, 64, 128), (152, 251, 152),
                  (244, 35, 232), (0, 200, 200), (0, 0, 142), (250, 170, 30),
                  (220, 220, 0))  # each pair of look-alikes in different hues

CLASSES_FILE = 'classes.json'  # {"classes": [...], "palette": [[r, g, b], ...]} next to the data

Palette = tuple[tuple[int, int, int], ...]


def default_palette(num_classes: int) -> Palette:
  """Distinct colours for classes without a palette: mmseg's random palette, but fixed."""
  rng = np.random.RandomState(0)
  return tuple(tuple(int(c) for c in rng.randint(0, 256, 3)) for _ in range(num_classes))


def read_folder(root: str | None, names=None, palette=None
                ) -> tuple[tuple[str, ...], Palette | None]:
  """(class names, palette or None) of a folder dataset: `names` / `palette`
  (config.dataset.classes / .palette) where given, else ROOT/classes.json's."""
  given_names, given_palette = names, palette
  path = os.path.join(root or '', CLASSES_FILE)
  if names is None:
    if not root:
      raise errors.InputError("config.dataset.name='folder' needs "
                              '--config.dataset.root=DIR, the folder that holds images/ and '
                              'annotations/.')
    if not os.path.isdir(root):
      raise errors.InputError(f'config.dataset.root={root}: no such folder (it should hold '
                              f'images/, annotations/ and {CLASSES_FILE}).')
    if not os.path.isfile(path):
      raise errors.InputError(
          f'{root} has no {CLASSES_FILE} and config.dataset.classes is not set: give '
          f'the class names, e.g. --config.dataset.classes="(\'background\', \'cat\')", or '
          f'write {path} as {{"classes": [...], "palette": [[r, g, b], ...]}}.')
    try:
      status = os.stat(path)
      stored = _read_json(path, status.st_mtime_ns, status.st_size)
      names, palette = stored['classes'], palette or stored.get('palette')
    except (ValueError, KeyError, TypeError) as error:
      raise errors.InputError(f'{path}: expected {{"classes": [...], "palette": [[r, g, b], '
                              f'...]}} ("palette" optional), could not read it ({error}).')
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
      raise errors.InputError(f'{path}: "classes" must be a list of names, e.g. '
                              f'["background", "cat"], not {names!r}.')
  source = path if given_names is None else 'config.dataset.classes'
  if isinstance(names, str):
    raise errors.InputError(f'{source}: the class names must be a list or tuple of names, '
                            f'not the string {names!r}.')
  names = tuple(str(name) for name in names)
  if not names:
    raise errors.InputError(f'{source} lists no classes.')
  if palette is None:
    return names, None
  palette_source = 'config.dataset.palette' if given_palette is not None else path
  palette = tuple(tuple(int(c) for c in colour) for colour in palette)
  if len(palette) != len(names) or any(len(c) != 3 or not all(0 <= v < 256 for v in c)
                                       for c in palette):
    raise errors.InputError(f'{palette_source}: the palette of {len(palette)} colours does '
                            f'not give one (r, g, b) colour in 0..255 to each of the '
                            f'{len(names)} classes of {source}.')
  if len(set(palette)) != len(palette):
    raise errors.InputError(f'{palette_source}: the palette gives two classes the same colour, '
                            'so an RGB label map could not be read back.')
  return names, palette


@functools.lru_cache(maxsize=8)
def _read_json(path: str, mtime_ns: int, size: int) -> dict:
  """The parsed file; (mtime, size) in the key read a changed file again."""
  del mtime_ns, size
  with open(path) as f:
    return json.load(f)


def for_folder(root: str | None, names=None, palette=None
               ) -> tuple[tuple[str, ...], Palette]:
  """`read_folder`, with `default_palette` where the folder gives none."""
  names, palette = read_folder(root, names, palette)
  return names, palette or default_palette(len(names))
