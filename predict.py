"""Segments your own images: colour-coded masks and overlays with a legend, as PNG.

  python predict.py --config=configs/ade20k.py --checkpoint=DIR photo.jpg folder/ --out=OUT

--checkpoint takes variables from `python -m psp_jax.convert` (a published mmseg or semseg
model) or --workdir a training workdir (its best checkpoint). config.test decides the
protocol (whole or sliding window, test resize, scales, flip); the dataset in the config
gives the class names and palette. For each image NAME.EXT, OUT/NAME.EXT_mask.png holds the
colour mask and OUT/NAME.EXT_overlay.png the blend with a legend of the classes present.
EXIF orientation is applied first, as photo viewers do. A file that cannot be read, or
an image of more than --max_pixels pixels, is reported in one line and skipped; the exit
status is then 1.

With config.test.resize='none' (every image at its own size, as the quickstart), an image
of more than --max_network_pixels runs through the network in windows of the training
crop (or config.test's slide windows) whose output-stride logits are averaged
(inference.Tiles), so memory stays bounded; labels near window borders can differ from a
whole-image pass, and a warning says which images were tiled.
"""

import os
import sys

import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from PIL import Image

from psp_jax.base import errors, images
from psp_jax.config import config_check
from psp_jax.data import catalog
from psp_jax.evaluation import inference, visualize
from psp_jax.models.pspnet import build_model
from psp_jax.tools import cli
from psp_jax.training import checkpoint

config_flags.DEFINE_config_file('config', None, 'Config file (model, dataset, test).',
                                lock_config=True)
flags.DEFINE_string('checkpoint', None, 'Variables written by psp_jax.convert.')
flags.DEFINE_string('workdir', None, 'Training workdir (its best checkpoint), instead.')
flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Which checkpoint of --workdir.')
flags.DEFINE_string('out', None, 'Output folder.')
flags.DEFINE_integer('max_pixels', 40_000_000, 'An image with more pixels (width x height) is '
                     'reported in one line and skipped; the rest are predicted.')
flags.DEFINE_integer('max_network_pixels', 2048 * 2048, "With config.test.resize='none', a "
                     'network input with more pixels runs in windows (module docstring).')
flags.mark_flags_as_required(['config', 'out'])
FLAGS = flags.FLAGS
_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def image_paths(arguments: list[str]) -> list[str]:
  """Files as given, and the images inside any folder given (sorted)."""
  if not arguments:
    raise errors.InputError('give at least one image or folder of images.')
  paths = []
  for argument in arguments:
    if os.path.isdir(argument):
      found = sorted(os.path.join(argument, name) for name in os.listdir(argument)
                     if name.lower().endswith(_EXTENSIONS))
      if not found:
        raise errors.InputError(f'no images found in {argument} (looked for '
                                f'{", ".join(_EXTENSIONS)}).')
      paths += found
    elif os.path.isfile(argument):
      paths.append(argument)
    else:
      raise errors.InputError(f'{argument}: no such file or folder.')
  return paths


def output_names(paths: list[str]) -> dict[str, str]:
  """path -> 'NAME.EXT', the prefix of its outputs; two inputs never share one."""
  names = {path: os.path.basename(path) for path in paths}
  by_name = {}
  for path, name in names.items():
    by_name.setdefault(name, []).append(path)
  clashes = [paths for paths in by_name.values() if len(paths) > 1]
  if clashes:
    raise errors.InputError('these inputs would write the same outputs: ' + '; '.join(
        ' and '.join(paths) for paths in clashes) + '. Predict them in separate runs.')
  return names


def tiles_for(config, output_stride: int) -> inference.Tiles | None:
  """Windows for network inputs past --max_network_pixels, where the input grows with the
  image (resize='none'): config.test's slide windows, or else the training crop."""
  if config.test.resize != 'none':
    return None  # the other resizes bound the input by config.test's sizes
  if config.test.mode == 'slide':
    return inference.Tiles.for_crop(FLAGS.max_network_pixels, config.test.crop_size,
                                    config.test.stride, output_stride)
  return inference.Tiles.for_crop(FLAGS.max_network_pixels, config.augment.crop_size,
                                  output_stride=output_stride)


def main(argv):
  if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
    raise errors.InputError(f'--out={FLAGS.out} is a file: give a folder (made if missing).')
  paths = image_paths(argv[1:])
  names = output_names(paths)
  if bool(FLAGS.workdir) == bool(FLAGS.checkpoint):
    raise errors.InputError('give exactly one of --checkpoint and --workdir.')
  config_check.check_config(FLAGS.config)
  config = FLAGS.config
  model = build_model(config.model)
  variables = (checkpoint.load_variables(FLAGS.checkpoint) if FLAGS.checkpoint
               else checkpoint.load_trained_variables(FLAGS.workdir, FLAGS.which)[0])
  checkpoint.check_fits(variables, checkpoint.variable_shapes(model),
                        FLAGS.checkpoint or FLAGS.workdir)
  class_names, palette = catalog.class_names_and_palette(config.dataset)
  test = inference.TestProtocol.from_config(config.test)
  predictor = inference.predictor_for_test(model, variables, test)
  tiles = tiles_for(config, model.output_stride)
  os.makedirs(FLAGS.out, exist_ok=True)
  failed = []
  for path in paths:
    try:
      image = images.read_rgb(path, FLAGS.max_pixels)
    except errors.InputError as error:
      sys.stderr.write(cli.one_line(error) + '\n')
      failed.append(path)
      continue
    except OSError as error:  # PIL's "cannot identify image file" is one too
      sys.stderr.write(f'error: {path}: cannot read it as an image ({error})\n')
      failed.append(path)
      continue
    tiled = [size for size in test.input_sizes(*image.shape[:2])
             if tiles and tiles.applies(*size)]
    if tiled:
      logging.warning('%s: network input %s is more than --max_network_pixels=%d: run in '
                      'windows of %s at stride %s.', path, 'x'.join(map(str, tiled[0])),
                      tiles.max_pixels, 'x'.join(map(str, tiles.window)),
                      'x'.join(map(str, tiles.stride)))
    prediction = inference.predict_labels(predictor, image, test, tiles=tiles)
    colours = visualize.colorize(prediction, palette)
    legend = visualize.legend(prediction, class_names, palette, image.shape[1])
    prefix = os.path.join(FLAGS.out, names[path])
    Image.fromarray(colours).save(f'{prefix}_mask.png')
    Image.fromarray(np.concatenate([visualize.overlay(image, colours), legend])).save(
        f'{prefix}_overlay.png')
    logging.info('%s -> %s_{mask,overlay}.png', path, prefix)
  if failed:
    sys.stderr.write(f'{len(failed)} of {len(paths)} images could not be read; the others '
                     f'are in {FLAGS.out}.\n')
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
