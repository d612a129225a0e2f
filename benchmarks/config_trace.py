"""Where a config travels in one training run, and how often a folder's classes.json is read.

  python -m benchmarks.config_trace --workdir=/tmp/trace

Trains tests/tiny_config.py for 2 steps over a folder dataset written to --workdir (six
synthetic scenes in mmseg's layout, with classes.json) under a `sys.setprofile` hook that
records each psp_jax function called with a ConfigDict argument, and prints the files in
the order the config visits them: how many, how many moves into another file, and how
many returns to a file it had left; and the opens of classes.json.
"""

import builtins
import json
import os
import sys

# Four simulated CPU devices, as the tests run the tiny config (before jax is imported).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags
import ml_collections
import numpy as np
from PIL import Image

from configs import quickstart
from psp_jax.data.builders import synthetic_scenes
from psp_jax.training import train_loop

flags.DEFINE_string('workdir', None, 'Empty folder for the dataset, TFDS data and the run.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root: str) -> None:
  """Four train and two validation scenes as ROOT/images, ROOT/annotations, classes.json."""
  for split, count in (('train', 4), ('val', 2)):
    os.makedirs(os.path.join(root, 'images', split), exist_ok=True)
    os.makedirs(os.path.join(root, 'annotations', split), exist_ok=True)
    for i in range(count):
      image, label = synthetic_scenes.render_scene(1000 * (split == 'val') + i)
      Image.fromarray(image).save(os.path.join(root, 'images', split, f's{i}.jpg'), quality=95)
      Image.fromarray(label.astype(np.uint8)).save(
          os.path.join(root, 'annotations', split, f's{i}.png'))
  with open(os.path.join(root, 'classes.json'), 'w') as f:
    json.dump({'classes': list(synthetic_scenes.CLASS_NAMES)}, f)


def tiny_folder_config(workdir: str) -> ml_collections.ConfigDict:
  """The quickstart at tests/tiny_config.py's size, on the folder, 2 steps, one evaluation."""
  config = quickstart.get_config()
  config.model.update(stem_widths=(4, 4, 8), base_width=4, ppm_channels=4, channels=8,
                      aux_channels=4)
  config.augment.crop_size = (32, 32)
  config.dataset.update(name='folder', root=os.path.join(workdir, 'folder'), prepare=True,
                        data_dir=os.path.join(workdir, 'tfds'))
  config.update(batch_size=4, num_train_steps=2, log_every_steps=1,
                eval_every_steps=2, checkpoint_every_steps=2, num_preview_images=1)
  config.optimizer.warmup_steps = 1
  return config


def main(argv):
  del argv
  write_folder(os.path.join(FLAGS.workdir, 'folder'))
  config = tiny_folder_config(FLAGS.workdir)
  package = os.path.join(ROOT, 'psp_jax') + os.sep
  visits, opens = [], []

  def profile(frame, event, _):
    code = frame.f_code
    if event != 'call' or not code.co_filename.startswith(package):
      return
    arguments = [frame.f_locals.get(name) for name in
                 code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]]
    if any(isinstance(a, ml_collections.ConfigDict) for a in arguments):
      name = os.path.relpath(code.co_filename, ROOT)
      if not visits or visits[-1] != name:
        visits.append(name)

  real_open = builtins.open

  def counting_open(file, *args, **kwargs):
    if str(file).endswith('classes.json'):
      opens.append(str(file))
    return real_open(file, *args, **kwargs)

  builtins.open = counting_open
  sys.setprofile(profile)
  try:
    train_loop.train_and_evaluate(config, os.path.join(FLAGS.workdir, 'run'))
  finally:
    sys.setprofile(None)
    builtins.open = real_open
  returns = sum(1 for i, name in enumerate(visits) if name in visits[:i])
  print('| files | moves into another file | returns to a file left | classes.json opens |')
  print('| --- | --- | --- | --- |')
  print(f'| {len(set(visits))} | {len(visits) - 1} | {returns} | {len(opens)} |')
  print('visits, in order:', ' -> '.join(visits))


if __name__ == '__main__':
  app.run(main)
