r"""Training input pipeline throughput on ADE20K-like data, through the real builder and pipeline.

  python -m benchmarks.input_pipeline_benchmark --num_images=200 --out=input_pipeline.json

Writes --num_images generated scenes (JPEG images, PNG annotations 0..150) into an
ADEChallengeData2016.zip in the real layout, prepares it with psp_jax's own ADE20K TFDS
builder (manual dir), then times `input_pipeline.create_split(builder, 'train',
configs/ade20k.py's config.augment, per_device_batch, train=True)` as train.py reads it
(`tfds.as_numpy`). Before it, cumulative stages built from the same functions (examples
read by offset in a per-epoch permutation, decoded in the map) show where the time goes:
read (TFRecord by offset, parsed, no decode), decode (JPEG + PNG), + rescale, + pad and crop
(with cat_max_ratio retries), + flip, + photometric distortion (= `augment`), then batched.

Each row: images/s as the median (and min, max) over --windows windows of --window_images
images after --warmup_images, and this process's CPU
time per image (user + system, over all threads), which other jobs on a shared machine
disturb less than wall time.

Image sizes (height x width), drawn per image, after ADE20K SceneParsing's training set,
where most images have a shorter side of 512 and about 4:3 shape (an approximation: the
archive's real histogram was not at hand):
  50% 512x683, 15% 683x512, 15% 512 x U(512, 1024), 10% smaller (shorter side U(256, 511),
  4:3), 10% larger (shorter side U(600, 1500), longer side up to 2000, landscape or portrait).
Scenes are Voronoi regions of 4-17 classes (ADE20K averages 10.5 classes an image), class
0 ("other", ignored after reduce_zero_label) included, coloured with shading and noise,
JPEG quality 85.

TensorFlow is kept off any accelerator and JAX on the host CPU (one device), so the batch
is [1, per_device_batch, 512, 512, 3].
"""

import io
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import zipfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # before jax is imported: no accelerator

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import app, flags  # noqa: E402

from psp_jax import config as ade20k_config  # noqa: E402  (its defaults are the ADE20K recipe)
from psp_jax.data import augment as augment_lib  # noqa: E402
from psp_jax.data import input_pipeline, records, resumable_iterator  # noqa: E402
from psp_jax.data.builders import ade20k  # noqa: E402

flags.DEFINE_integer('num_images', 200, 'generated training images')
flags.DEFINE_integer('per_device_batch', 16, 'batch of the create_split row')
flags.DEFINE_integer('warmup_images', 320, 'discarded first')
flags.DEFINE_integer('window_images', 64, 'images per timed window')
flags.DEFINE_integer('windows', 5, 'timed windows per row')
flags.DEFINE_string('stages', 'all', "'all', or a comma-separated list of row numbers (0-based)")
flags.DEFINE_string('workdir', None,
                    'keeps archive and TFDS data here (reused if already prepared); '
                    'default: a temporary directory, removed at the end')
flags.DEFINE_integer('seed', 0, 'of the generated images')
flags.DEFINE_bool('saved_state', False, 'also print the bytes of one saved stream position')
flags.DEFINE_string('out', None, 'JSON file for the table')
FLAGS = flags.FLAGS
FLAG_NAMES = ('num_images', 'per_device_batch', 'warmup_images', 'window_images', 'windows',
              'stages', 'workdir', 'seed', 'saved_state', 'out')


def _image_size(rng: np.random.RandomState) -> tuple[int, int]:
  """(height, width) from the distribution in the module docstring."""
  kind = rng.uniform()
  if kind < 0.50:
    return 512, 683
  if kind < 0.65:
    return 683, 512
  if kind < 0.80:
    return 512, rng.randint(512, 1025)
  if kind < 0.90:
    short = rng.randint(256, 512)
    return short, round(short * 4 / 3)
  short = rng.randint(600, 1501)
  long = min(2000, round(short * rng.uniform(1.0, 1.5)))
  return (short, long) if rng.uniform() < 0.7 else (long, short)


def _scene(height: int, width: int, rng: np.random.RandomState):
  """A Voronoi scene: (image [H, W, 3] uint8, annotation [H, W] uint8 in 0..150)."""
  n = rng.randint(4, 18)
  ys, xs = rng.uniform(0, height, n), rng.uniform(0, width, n)
  step = 4  # regions at 1/4 resolution keep generation fast; edges stay jagged as real ones
  grid_y, grid_x = np.mgrid[0:height:step, 0:width:step]
  region = np.argmin((grid_y[..., None] - ys) ** 2 + (grid_x[..., None] - xs) ** 2, -1)
  region = np.repeat(np.repeat(region, step, 0), step, 1)[:height, :width]
  classes = rng.randint(0, ade20k.NUM_CLASSES + 1, n)
  colours = rng.randint(0, 256, (n, 3)).astype(np.float32)
  coarse = rng.uniform(0, 255, (height // 32 + 1, width // 32 + 1)).astype(np.uint8)
  shade = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR),
                     np.float32) - 128
  image = 0.7 * colours[region] + 0.3 * shade[..., None] + rng.normal(0, 5, (height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8), classes[region].astype(np.uint8)


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def write_archive(path: str, num_train: int, num_validation: int, seed: int) -> list:
  """Writes ADEChallengeData2016.zip as the real one is laid out; returns the train sizes."""
  rng = np.random.RandomState(seed)
  sizes = []
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as zf:
    for folder, prefix, count in (('training', 'ADE_train', num_train),
                                  ('validation', 'ADE_val', num_validation)):
      for index in range(1, count + 1):
        height, width = _image_size(rng)
        image, annotation = _scene(height, width, rng)
        stem = f'{prefix}_{index:08d}'
        # JPEG bytes are stored, not deflated, as in the real archive (they do not shrink).
        zf.writestr(f'{ade20k.ROOT}/images/{folder}/{stem}.jpg',
                    _encode(image, 'JPEG', quality=85), compress_type=zipfile.ZIP_STORED)
        zf.writestr(f'{ade20k.ROOT}/annotations/{folder}/{stem}.png', _encode(annotation, 'PNG'))
        if folder == 'training':
          sizes.append((height, width))
  return sizes


def prepare_builder(workdir: str, num_images: int, seed: int):
  """The real ADE20K builder prepared from a generated archive in workdir/manual.

  Returns (builder, [(height, width)] of the training images). A workdir prepared before
  with the same images is reused as it is.
  """
  manual_dir = os.path.join(workdir, 'manual')
  record = os.path.join(workdir, 'images.json')
  wanted = {'num_images': num_images, 'seed': seed}
  builder = ade20k.Ade20k(data_dir=os.path.join(workdir, 'tfds'))
  previous = {}
  if os.path.exists(record):
    with open(record) as f:
      previous = json.load(f)
  if builder.is_prepared() and {k: previous.get(k) for k in wanted} == wanted:
    sizes = [tuple(size) for size in previous['sizes']]
  else:
    shutil.rmtree(os.path.join(workdir, 'tfds'), ignore_errors=True)
    os.makedirs(manual_dir, exist_ok=True)
    sizes = write_archive(os.path.join(manual_dir, ade20k.ARCHIVE), num_images, 2, seed)
    builder = ade20k.Ade20k(data_dir=os.path.join(workdir, 'tfds'))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    with open(record, 'w') as f:
      json.dump(dict(wanted, sizes=sizes), f)
  return builder, sizes


def _stage_dataset(builder, per_device_batch: int, fn, decode: bool = True) -> tf.data.Dataset:
  """create_split's training front with `fn(index, image, label)` in its map.

  Positions are mapped to examples of the (one-device) shard as create_split maps them,
  each example is read by its offset and parsed; the map decodes its images (unless
  `decode` is False) and applies `fn`.
  """
  features = builder.info.features
  keys = ('image', 'segmentation_mask')
  stored = records.split_records(builder, 'train')
  seed = tf.constant([0, 0], tf.int64)
  skip = {k: tfds.decode.SkipDecoding() for k in keys} if not decode else None

  def prepare(index):
    example = features.deserialize_example(stored.read(index), decoders=skip)
    return fn(index, example['image'], example['segmentation_mask'])

  ds = tf.data.Dataset.range(2 ** 62).map(
      lambda p: prepare(input_pipeline.shard_order(p, len(stored), seed)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def stages(builder, augment_config, per_device_batch: int):
  """(name, dataset, images per element): cumulative steps of the training pipeline."""
  config = dict(augment_config)

  def seed_of(index):
    return tf.cast(tf.stack([tf.constant(0, tf.int64), index]), tf.int32)

  def rescale(index, image, label):
    # augment's first step, with the seed augment gives it.
    seed = tf.random.experimental.stateless_split(seed_of(index), 6)[0]
    return augment_lib.random_rescale(tf.cast(image, tf.float32), label, seed,
                                         config['scale_range'], config.get('resize_scale'))

  def augment(overrides):
    step_config = dict(config, **overrides)
    return lambda index, image, label: augment_lib.augment(image, label, seed_of(index),
                                                           step_config)

  yield 'read (no decode)', _stage_dataset(builder, per_device_batch,
                                           lambda i, image, label: (image, label), False), 1
  yield 'decode JPEG + PNG', _stage_dataset(builder, per_device_batch,
                                            lambda i, image, label: (image, label)), 1
  yield '+ rescale', _stage_dataset(builder, per_device_batch, rescale), 1
  yield '+ pad, crop', _stage_dataset(
      builder, per_device_batch, augment(dict(flip=False, photometric=False))), 1
  yield '+ flip', _stage_dataset(builder, per_device_batch, augment(dict(photometric=False))), 1
  yield '+ photometric (augment)', _stage_dataset(builder, per_device_batch, augment({})), 1
  split = input_pipeline.create_split(builder, 'train', augment_config, per_device_batch,
                                      seed=0)
  batch = int(np.prod(split.element_spec['image'].shape[:2]))
  yield f'create_split (batch {batch})', split, batch


def measure(ds: tf.data.Dataset, per_element: int, warmup: int, window: int, windows: int):
  """Images/s (median, min, max) over `windows` windows, and CPU ms per image."""
  iterator = iter(tfds.as_numpy(ds))
  for _ in range(-(-warmup // per_element)):
    next(iterator)
  elements = -(-window // per_element)
  rates, cpu = [], []
  for _ in range(windows):
    wall, process = time.perf_counter(), time.process_time()
    for _ in range(elements):
      next(iterator)
    rates.append(elements * per_element / (time.perf_counter() - wall))
    cpu.append((time.process_time() - process) / (elements * per_element))
  return {'img_s': statistics.median(rates), 'img_s_min': min(rates), 'img_s_max': max(rates),
          'cpu_ms_per_img': 1e3 * statistics.median(cpu)}


def saved_state_bytes(builder, augment_config, per_device_batch: int) -> int:
  """Bytes `ResumableIterator.save` writes (this process's stream position) after 3 batches."""
  dataset = input_pipeline.create_split(builder, 'train', augment_config, per_device_batch)
  directory = tempfile.mkdtemp(prefix='data_state_')
  try:
    batches = resumable_iterator.ResumableIterator(dataset, per_device_batch, directory)
    for _ in range(3):
      next(batches)
    batches.save(3)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(directory) for name in names)
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  input_pipeline.hide_accelerators_from_tf()
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='input_pipeline_benchmark_')
  try:
    start = time.perf_counter()
    builder, sizes = prepare_builder(workdir, FLAGS.num_images, FLAGS.seed)
    prepare_s = time.perf_counter() - start
    config = ade20k_config.get_config()
    wanted = None if FLAGS.stages == 'all' else {int(s) for s in FLAGS.stages.split(',')}
    rows = []
    for number, (name, ds, per_element) in enumerate(
        stages(builder, config.augment, FLAGS.per_device_batch)):
      if wanted is None or number in wanted:
        rows.append({'stage': name, **measure(ds, per_element, FLAGS.warmup_images,
                                              FLAGS.window_images, FLAGS.windows)})
    state_bytes = (saved_state_bytes(builder, config.augment, FLAGS.per_device_batch)
                   if FLAGS.saved_state else None)
  finally:
    if not FLAGS.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  megapixels = [h * w / 1e6 for h, w in sizes]
  print(f'{platform.processor() or platform.machine()} {os.cpu_count()} cores, '
        f'tf {tf.__version__}; {len(sizes)} images, mean {statistics.mean(megapixels):.3f} MP '
        f'(max {max(megapixels):.2f}); crop {tuple(config.augment.crop_size)}; prepared in '
        f'{prepare_s:.0f} s')
  if state_bytes is not None:
    print(f'saved stream position: {state_bytes} bytes per process (per-device batch '
          f'{FLAGS.per_device_batch})')
  header = ('stage', 'img_s', 'img_s_min', 'img_s_max', 'cpu_ms_per_img')
  print(' | '.join(header))
  for row in rows:
    print(' | '.join(row[h] if isinstance(row[h], str) else f'{row[h]:.4g}' for h in header))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump({'cores': os.cpu_count(), 'tf': tf.__version__,
                 'args': {name: FLAGS[name].value for name in FLAG_NAMES},
                 'augment': config.augment.to_dict(), 'mean_megapixels':
                 statistics.mean(megapixels), 'rows': rows, 'saved_state_bytes': state_bytes,
                 'date': time.strftime('%Y-%m-%d')},
                f, indent=2)


if __name__ == '__main__':
  app.run(main)
