"""Cityscapes through TFDS's own builder, with label ids mapped to the 19 train ids.

psp_jax adds no builder for Cityscapes: TFDS's `cityscapes/semantic_segmentation`
already reads the official archives. Preparing it once:

  1. Register at https://www.cityscapes-dataset.com and download
     `leftImg8bit_trainvaltest.zip` (images, ~11 GB) and `gtFine_trainvaltest.zip`
     (fine annotations, ~250 MB). Put both, unextracted and under exactly these
     names, in one folder: the TFDS manual dir (by default
     `<data_dir>/downloads/manual/`, i.e. `~/tensorflow_datasets/downloads/manual/`).
  2. `tfds build cityscapes/semantic_segmentation --manual_dir=<that folder>
     [--data_dir=<data_dir>]`, or from Python:
       tfds.builder('cityscapes/semantic_segmentation', data_dir=data_dir)
           .download_and_prepare(download_config=tfds.download.DownloadConfig(
               manual_dir=manual_dir))
     This extracts the zips and writes train (2975), validation (500) and test
     (1525, labels withheld) examples of 1024x2048 PNGs. train.py with
     `--config.dataset.prepare=True` does the same, then decodes every stored PNG once
     (the catalog row's check_after_prepare); a dataset built with `tfds build` is not
     checked.

Each TFDS example is {'image_id': str, 'image_left': uint8 [1024, 2048, 3],
'segmentation_label': uint8 [1024, 2048, 1]}, where the label holds the
`*_gtFine_labelIds.png` values: Cityscapes label ids 0..33. Training and the
published mIoU use the 19 train ids instead, so the input pipeline reads examples
through `decode`, which maps ids to train ids with one table lookup. Like the rest
of the input pipeline it is TensorFlow on the host CPU only (see
`input_pipeline.hide_accelerators_from_tf`); JAX owns the accelerators.

The training recipe (crop size, schedule, the numbers to reproduce) belongs in the
Cityscapes config, not here.
"""

import numpy as np
import tensorflow as tf

from psp_jax.base.spec import IGNORE_LABEL
from psp_jax.data import catalog

TFDS_NAME = 'cityscapes/semantic_segmentation'
CLASS_NAMES = catalog.CITYSCAPES.class_names

# The label id of each train id, from the `labels` table of cityscapesScripts'
# cityscapesscripts/helpers/labels.py (github.com/mcordts/cityscapesScripts, master,
# file last changed in 9f0aa8d). All other ids (void, parking, rail track, guard rail,
# bridge, tunnel, polegroup, caravan, trailer) have trainId 255. License plates
# (id -1) are never drawn into the label images (json2labelImg skips ids < 0), so no
# pixel carries them. mmseg trains on the *_labelTrainIds.png that cityscapesScripts'
# createTrainIdLabelImgs draws from the same polygons with trainId as fill value,
# which is pixel for pixel this table applied to *_labelIds.png.
_LABEL_IDS_OF_TRAIN_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31,
                           32, 33)

ID_TO_TRAIN_ID = np.full(256, IGNORE_LABEL, np.uint8)  # [256]: label id -> train id or 255
ID_TO_TRAIN_ID[list(_LABEL_IDS_OF_TRAIN_IDS)] = np.arange(len(CLASS_NAMES))


def decode(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
  """One TFDS cityscapes example as the input pipeline's (image, label).

  Args:
    example: an element of `builder.as_dataset()` for `TFDS_NAME`.
  Returns:
    (image [H, W, 3] uint8, label [H, W, 1] uint8 train ids, 255 = ignore).
  """
  label_ids = tf.cast(example['segmentation_label'], tf.int32)  # tf.gather wants int indices
  return example['image_left'], tf.gather(tf.constant(ID_TO_TRAIN_ID), label_ids)
