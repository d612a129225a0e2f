"""TFDS builders of the datasets psp_jax trains on, and their label conventions.

Importing this package registers our builders with TFDS. `dataset_module` maps a TFDS
name (as in `config.dataset.name`) to the module holding its CLASS_NAMES and PALETTE
and, where the stored labels need mapping (Cityscapes ids -> train ids), its `decode`.
"""

from types import ModuleType

from psp_jax.datasets import ade20k, cityscapes, synthetic_scenes, voc12_aug

_MODULES = {
    'synthetic_scenes': synthetic_scenes,
    'ade20k': ade20k,
    'voc12_aug': voc12_aug,
    'cityscapes': cityscapes,
}


def dataset_module(tfds_name: str) -> ModuleType:
  """'cityscapes/semantic_segmentation:1.0.0' -> psp_jax.datasets.cityscapes."""
  name = tfds_name.split('/')[0].split(':')[0]
  if name not in _MODULES:
    raise ValueError(f'config.dataset.name={tfds_name!r}: psp_jax knows the class names of '
                     f'{sorted(_MODULES)} only.')
  return _MODULES[name]
