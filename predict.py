"""Segments your own images: colour-coded masks and overlays with a legend, as PNG.

  python predict.py --config=configs/ade20k.py --checkpoint=DIR photo.jpg folder/ --out=OUT

--checkpoint takes variables from `python -m psp_jax.convert` (a published mmseg or semseg
model) or --workdir a training workdir (its best checkpoint). config.test decides the
protocol (whole or sliding window, test resize, scales, flip); the dataset in the config
gives the class names and palette. For each image OUT/<name>_mask.png holds the colour
mask and OUT/<name>_overlay.png the blend with a legend of the classes present.
"""

import os

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image

from psp_jax import checkpoint, classes, config_check, inference, visualize
from psp_jax.models.pspnet import build_model

config_flags.DEFINE_config_file('config', None, 'Config file (model, dataset, test).',
                                lock_config=True)
flags.DEFINE_string('checkpoint', None, 'Variables written by psp_jax.convert.')
flags.DEFINE_string('workdir', None, 'Training workdir (its best checkpoint), instead.')
flags.DEFINE_string('out', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'out'])
FLAGS = flags.FLAGS
_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def image_paths(arguments: list[str]) -> list[str]:
  """Files as given, and the images inside any folder given (sorted)."""
  paths = []
  for argument in arguments:
    if os.path.isdir(argument):
      paths += sorted(os.path.join(argument, name) for name in os.listdir(argument)
                      if name.lower().endswith(_EXTENSIONS))
    elif os.path.isfile(argument):
      paths.append(argument)
    else:
      raise app.UsageError(f'{argument}: no such file or folder.')
  return paths


def main(argv):
  paths = image_paths(argv[1:])
  if not paths:
    raise app.UsageError('Give at least one image or folder of images.')
  if bool(FLAGS.workdir) == bool(FLAGS.checkpoint):
    raise app.UsageError('Give exactly one of --checkpoint and --workdir.')
  config_check.check_config(FLAGS.config)
  config = FLAGS.config
  model = build_model(config.model)
  variables = (checkpoint.load_variables(FLAGS.checkpoint) if FLAGS.checkpoint
               else checkpoint.load_trained_variables(FLAGS.workdir)[0])
  checkpoint.check_fits(variables, checkpoint.variable_shapes(model),
                        FLAGS.checkpoint or FLAGS.workdir)
  class_names, palette = classes.for_dataset(config.dataset.name)
  test = inference.TestProtocol.from_config(config.test)
  predictor = inference.predictor_for_test(model, variables, test)
  os.makedirs(FLAGS.out, exist_ok=True)
  for path in paths:
    image = np.asarray(Image.open(path).convert('RGB'))
    prediction = inference.predict(predictor, image, test).argmax(-1)
    colours = visualize.colorize(prediction, palette)
    legend = visualize.legend(prediction, class_names, palette, image.shape[1])
    name = os.path.splitext(os.path.basename(path))[0]
    Image.fromarray(colours).save(os.path.join(FLAGS.out, f'{name}_mask.png'))
    blended = np.concatenate([visualize.overlay(image, colours), legend])
    Image.fromarray(blended).save(os.path.join(FLAGS.out, f'{name}_overlay.png'))
    logging.info('%s -> %s/%s_{mask,overlay}.png', path, FLAGS.out, name)


if __name__ == '__main__':
  app.run(main, flags_parser=config_check.parse_flags)
