"""Class weights for imbalanced datasets, from a prepared split's label histogram.

  python -m psp_jax.tools.class_weights --config=configs/camvid.py [--method=enet] [--split=train]

prints the histogram and the `--config.class_weight=...` of the method:
- 'median_frequency' (SegNet, Eigen & Fergus): freq(c) = pixels of class c / pixels of the
  images in which c appears; weight(c) = median over classes of freq / freq(c).
- 'enet' (ENet, Paszke et al. 2016): weight(c) = 1 / ln(1.02 + p(c)), p(c) the share of
  class c among all labelled pixels; weights lie in [1, 50].
Ignored pixels (255) count for neither.
"""

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from psp_jax.base import errors, spec
from psp_jax.config import config_check
from psp_jax.data import input_pipeline
from psp_jax.data.dataset import Dataset
from psp_jax.tools import cli

ENET_C = 1.02  # ENet's constant


def median_frequency(pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
  """[K] SegNet weights from [K] class pixel counts and [K] pixels of the images holding each."""
  pixels, image_pixels = np.asarray(pixels, np.float64), np.asarray(image_pixels, np.float64)
  if (pixels == 0).any():
    raise errors.InputError(f'classes {np.flatnonzero(pixels == 0).tolist()} never appear: '
                            'median-frequency weights are undefined for them.')
  frequency = pixels / image_pixels
  return np.median(frequency) / frequency


def enet(pixels: np.ndarray, c: float = ENET_C) -> np.ndarray:
  """[K] ENet weights 1 / ln(c + p) from [K] class pixel counts."""
  pixels = np.asarray(pixels, np.float64)
  return 1.0 / np.log(c + pixels / pixels.sum())


def label_histogram(labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """([K] pixels of each class, [K] pixels of the images in which each class appears)
  over an iterable of [H, W] or [H, W, 1] label maps (255 = ignore, not counted)."""
  pixels = np.zeros(num_classes, np.int64)
  image_pixels = np.zeros(num_classes, np.int64)
  for label in labels:
    label = np.asarray(label).reshape(-1)
    counts = np.bincount(label[label != spec.IGNORE_LABEL], minlength=num_classes)
    pixels += counts[:num_classes]
    image_pixels += np.where(counts[:num_classes] > 0, label.size, 0)
  return pixels, image_pixels


METHODS = {'median_frequency': median_frequency,
           'enet': lambda pixels, image_pixels: enet(pixels)}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined only when it runs: importing the functions defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file (its dataset).',
                                  lock_config=True)
  flags.DEFINE_enum('method', 'enet', sorted(METHODS), 'Which weighting.')
  flags.DEFINE_string('split', None, 'TFDS split (default: config.dataset.train_split).')
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  config_check.check_config(config)
  input_pipeline.hide_accelerators_from_tf()
  data = Dataset(config.dataset)
  data.check_prepared()
  data.prepare()
  class_names = data.class_names
  split = FLAGS.split or config.dataset.train_split
  labels = (label for _, label in data.examples(split))
  pixels, image_pixels = label_histogram(labels, len(class_names))
  weights = METHODS[FLAGS.method](pixels, image_pixels)
  share = pixels / max(pixels.sum(), 1)
  print(f'{config.dataset.name} {split}: {FLAGS.method} weights')
  for name, p, w in zip(class_names, share, weights):
    print(f'  {name:20s} {100 * p:6.2f}% of labelled pixels   weight {w:.4f}')
  print('--config.class_weight="(' + ', '.join(f'{w:.4f}' for w in weights) + ')"')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
