"""predict.py's peak memory and time on one large photo, whole-image pass against windows.

  python -m benchmarks.predict_memory --scratch=DIR --config=configs/quickstart.py \
      --size=6000x6000 [--config.model.depth=50 ...]

Writes the config's model with random variables (psp_jax.convert's format) and a photo of
--size (a 500x500 noise tile repeated), then runs predict.py on it under /usr/bin/time -v,
with config.test.resize='none' (every image at its own size, as the quickstart): once with
--max_network_pixels above the photo (the whole-image pass) and once with each of
--max_network_pixels (windows past them), and prints peak resident memory and wall time.
A run the machine cannot hold shows its exit status (-9: killed for memory).
"""

import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from psp_jax.models import build_model
from psp_jax.training import checkpoint

config_flags.DEFINE_config_file('config', 'configs/quickstart.py', 'The model and test config.')
flags.DEFINE_string('scratch', None, 'A folder for the variables, the photo and the outputs.')
flags.DEFINE_string('size', '6000x6000', 'The photo, HEIGHTxWIDTH.')
flags.DEFINE_list('max_network_pixels', ['4194304'], 'Tiled runs: predict.py\'s limits.')
flags.DEFINE_integer('timeout', 1800, 'Seconds per predict.py run.')
flags.mark_flags_as_required(['scratch'])
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_overrides() -> list[str]:
  """The --config.* flags given to this script, passed on to predict.py."""
  return [a for a in sys.argv[1:] if a.startswith('--config.')]


def predict(variables: str, photo: str, out: str, max_network_pixels: int,
            overrides: list[str]) -> tuple[int, float, float]:
  """(exit status, peak RSS in GiB, seconds) of one predict.py run."""
  command = ['/usr/bin/time', '-v', sys.executable, 'predict.py',
             f'--config={FLAGS["config"].config_filename}', *overrides,
             "--config.test.resize=none", f'--checkpoint={variables}', f'--out={out}',
             f'--max_pixels={10**9}', f'--max_network_pixels={max_network_pixels}', photo]
  start = time.time()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=FLAGS.timeout)
  seconds = time.time() - start
  peak = re.search(r'Maximum resident set size \(kbytes\): (\d+)', result.stderr)
  status = re.search(r'Exit status: (\d+)', result.stderr)
  signal = re.search(r'Command terminated by signal (\d+)', result.stderr)
  code = -int(signal.group(1)) if signal else int(status.group(1)) if status else -1
  if code not in (0, -9):
    sys.stderr.write(result.stderr[-3000:])
  return code, int(peak.group(1)) / 2**20 if peak else float('nan'), seconds


def main(argv):
  del argv
  os.makedirs(FLAGS.scratch, exist_ok=True)
  config = FLAGS.config
  model = build_model(config.model)
  variables = os.path.join(FLAGS.scratch, 'variables')
  if not os.path.isdir(variables):
    checkpoint.save_variables(variables, jax.jit(model.init)(
        jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
  height, width = map(int, FLAGS.size.split('x'))
  photo = os.path.join(FLAGS.scratch, f'photo_{height}x{width}.png')
  if not os.path.exists(photo):
    tile = np.random.RandomState(0).randint(0, 256, (500, 500, 3)).astype(np.uint8)
    reps = (-(-height // 500), -(-width // 500), 1)
    Image.fromarray(np.tile(tile, reps)[:height, :width]).save(photo)
  overrides = config_overrides()
  print(f'{FLAGS["config"].config_filename} {" ".join(overrides)}, {height}x{width}, '
        f'{config.model.num_classes} classes, window {tuple(config.augment.crop_size)}')
  print('| pass | --max_network_pixels | exit | peak RSS GiB | seconds |')
  print('| --- | --- | --- | --- | --- |')
  runs = [('whole image', 10**12)] + [('windows', int(n))
                                             for n in FLAGS.max_network_pixels]
  for name, limit in runs:
    code, peak, seconds = predict(variables, photo, os.path.join(FLAGS.scratch, 'out'), limit,
                                  overrides)
    print(f'| {name} | {limit} | {code} | {peak:.2f} | {seconds:.0f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
