"""TFDS builders of the datasets psp_jax trains on, and their label conventions.

Importing this package registers our builders with TFDS. `dataset_module` maps a TFDS
name (as in `config.dataset.name`) to the module holding its builder and, where the stored
labels need mapping (Cityscapes ids -> train ids), its `decode`; `builder` makes the TFDS
builder of a config.dataset, a folder of your own data included.
"""

from types import ModuleType

import tensorflow_datasets as tfds

from psp_jax import classes, errors
from psp_jax.datasets import ade20k, camvid, cityscapes, folder, synthetic_scenes, voc12_aug

_MODULES = {
    'synthetic_scenes': synthetic_scenes,
    'ade20k': ade20k,
    'voc12_aug': voc12_aug,
    'cityscapes': cityscapes,
    'camvid': camvid,
    classes.FOLDER: folder,
}


def dataset_module(tfds_name: str) -> ModuleType:
  """'cityscapes/semantic_segmentation:1.0.0' -> psp_jax.datasets.cityscapes."""
  name = classes.base_name(tfds_name)
  if name not in _MODULES:
    raise errors.InputError(f'config.dataset.name={tfds_name!r}: psp_jax reads '
                            f'{sorted(_MODULES)}; {classes.FOLDER!r} is your own data.')
  return _MODULES[name]


def builder(dataset) -> tfds.core.DatasetBuilder:
  """The TFDS builder of config.dataset (name, data_dir; a folder's root and settings)."""
  if dataset_module(dataset.name) is folder:
    return folder.builder(dataset)
  return tfds.builder(dataset.name, data_dir=dataset.data_dir)
