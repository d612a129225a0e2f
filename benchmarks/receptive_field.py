r"""Effective receptive field of a trained model: how far from a logit cell its input matters.

  python -m benchmarks.receptive_field --config=configs/quickstart.py --workdir=DIR \
      [--num_images=64] [--beyond=96]

As Luo et al. 2016 ("Understanding the effective receptive field in deep CNNs"): the
gradient of one logit at the output-stride map's centre cell (the class the model predicts
there) with respect to the input image, |d logit / d pixel| summed over colour channels and
averaged over validation images. It prints the radii (Euclidean, in input pixels from the
cell's centre) inside which 50/90/95/99% of that gradient lies, and the share of it at
least --beyond pixels away, for the model as configured (e.g. with and without the
pyramid: `--config.model.pool_scales='()'` and an FCN workdir). One JSON line.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from ml_collections import config_flags

from psp_jax.evaluation import inference
from psp_jax.models.pspnet import build_model
from psp_jax.training import checkpoint

config_flags.DEFINE_config_file('config', None, 'The config the workdir was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir (its best checkpoint).')
flags.DEFINE_integer('num_images', 64, 'Validation images to average over.')
flags.DEFINE_integer('beyond', 96, 'Also report the gradient share at least this far away.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS

OUTPUT_STRIDE = 8


def centre_logit_gradient(model, variables, image: jax.Array) -> jax.Array:
  """[H, W, 3] normalised image -> [H, W] |d logit / d pixel| of the centre cell's predicted
  class, summed over colour channels."""
  def centre_logits(x):
    logits = model.apply(variables, x[None])['logits'][0]
    return logits[logits.shape[0] // 2, logits.shape[1] // 2]

  predicted = jnp.argmax(centre_logits(image))
  gradient = jax.grad(lambda x: centre_logits(x)[predicted])(image)
  return jnp.abs(gradient).sum(-1)


def summary(gradient: np.ndarray, cells: tuple[int, int], beyond: float) -> dict:
  """Radii holding 50-99% of the mean gradient map, and its share >= `beyond` px away."""
  height, width = gradient.shape
  centre = [(c // 2 + 0.5) * OUTPUT_STRIDE for c in cells]  # the centre cell's middle pixel
  rows, columns = np.mgrid[:height, :width] + 0.5
  distance = np.hypot(rows - centre[0], columns - centre[1]).ravel()
  order = np.argsort(distance)
  mass = np.cumsum(gradient.ravel()[order]) / gradient.sum()
  radii = {f'r{p}': float(distance[order][np.searchsorted(mass, p / 100)])
           for p in (50, 90, 95, 99)}
  return {**radii, f'share_beyond_{beyond:g}px': float(gradient.ravel()[distance >= beyond].sum()
                                                       / gradient.sum())}


def main(argv):
  del argv
  config = FLAGS.config
  model = build_model(config.model)
  variables, step = checkpoint.load_trained_variables(FLAGS.workdir)
  split = tfds.load(config.dataset.name, split=f'validation[:{FLAGS.num_images}]',
                    data_dir=config.dataset.get('data_dir'))
  gradient_of = jax.jit(lambda image: centre_logit_gradient(model, variables, image))
  total, cells = None, None
  for example in tfds.as_numpy(split):
    image = inference.normalize(example['image'])
    cells = tuple(-(-n // OUTPUT_STRIDE) for n in image.shape[:2])
    gradient = np.asarray(gradient_of(jnp.asarray(image)), np.float64)
    total = gradient if total is None else total + gradient
  print(json.dumps({'workdir': FLAGS.workdir, 'step': step,
                    'pool_scales': list(config.model.pool_scales),
                    'image_size': list(total.shape), 'num_images': FLAGS.num_images,
                    **summary(total, cells, FLAGS.beyond)}))


if __name__ == '__main__':
  app.run(main)
