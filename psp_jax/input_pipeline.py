"""tf.data input pipeline: mmseg/semseg training augmentation on TFDS segmentation data.

TensorFlow only decodes and augments on the host CPU: `hide_accelerators_from_tf`
runs before any dataset is built, so TF never claims memory on a GPU/TPU that JAX owns.
Randomness is stateless and keyed by (seed, example index), so a pipeline is
deterministic given its seed.
"""

from typing import Any, Mapping

import tensorflow as tf

from psp_jax.losses import IGNORE_LABEL
# ImageNet statistics in 0-255 pixel units, as mmseg's data_preprocessor.
MEAN_RGB = (123.675, 116.28, 103.53)
STDDEV_RGB = (58.395, 57.12, 57.375)


def hide_accelerators_from_tf() -> None:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


def random_rescale(image, label, seed, ratio_range):
  """Scales both by one random ratio: image bilinearly, label by nearest neighbour."""
  ratio = tf.random.stateless_uniform([], seed, ratio_range[0], ratio_range[1])
  size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * ratio), tf.int32)
  image = tf.image.resize(image, size, method='bilinear')
  label = tf.image.resize(label, size, method='nearest')
  return image, label


def pad_to_crop(image, label, crop_size):
  """Pads bottom/right to at least crop_size: image with the mean, label with 255."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  pad_h = tf.maximum(crop_size[0] - height, 0)
  pad_w = tf.maximum(crop_size[1] - width, 0)
  paddings = [[0, pad_h], [0, pad_w], [0, 0]]
  image = tf.concat([tf.pad(image[..., c:c + 1], paddings, constant_values=MEAN_RGB[c])
                     for c in range(3)], axis=-1)
  label = tf.pad(label, paddings, constant_values=IGNORE_LABEL)
  return image, label


def random_crop(image, label, seed, crop_size, cat_max_ratio=1.0, max_tries=10):
  """mmseg's RandomCrop: retry (up to 10 times) while one class covers > cat_max_ratio."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]

  def offsets(i):
    s = tf.random.experimental.stateless_fold_in(seed, i)
    top = tf.random.stateless_uniform([], s, 0, height - crop_size[0] + 1, tf.int32)
    left = tf.random.stateless_uniform([], tf.reverse(s, [0]), 0, width - crop_size[1] + 1,
                                       tf.int32)
    return top, left

  def dominated(top, left):
    """mmseg accepts a crop only if it holds > 1 class and none covers >= cat_max_ratio."""
    crop = label[top:top + crop_size[0], left:left + crop_size[1]]
    labels = tf.boolean_mask(crop, crop != IGNORE_LABEL)
    _, _, counts = tf.unique_with_counts(labels)
    share = tf.cast(tf.reduce_max(counts), tf.float32) / tf.cast(
        tf.maximum(tf.reduce_sum(counts), 1), tf.float32)
    return tf.logical_or(tf.size(counts) <= 1, share >= cat_max_ratio)

  top, left = offsets(0)
  if cat_max_ratio < 1.0:
    def retry(i, top, left):
      top, left = offsets(i)
      return i + 1, top, left
    _, top, left = tf.while_loop(lambda i, t, l: tf.logical_and(i < max_tries, dominated(t, l)),
                                 retry, (tf.constant(1), top, left))
  return (image[top:top + crop_size[0], left:left + crop_size[1]],
          label[top:top + crop_size[0], left:left + crop_size[1]])


def random_flip(image, label, seed):
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
          tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label))


def normalize(image):
  return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def augment(image, label, seed, config: Mapping[str, Any]):
  """Training augmentation of one example; each step is switched by `config` (config.augment).

  Args:
    image: [H, W, 3] uint8. label: [H, W, 1] uint8/int, 255 = ignore.
    seed: [2] int32 stateless seed for this example.
  Returns:
    ([crop_h, crop_w, 3] float32 normalised image, [crop_h, crop_w] int32 label).
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  image, label = tf.cast(image, tf.float32), tf.cast(label, tf.int32)
  if config['scale_range'] is not None:
    image, label = random_rescale(image, label, seeds[0], config['scale_range'])
  crop = config['crop_size']
  image, label = pad_to_crop(image, label, crop)
  image, label = random_crop(image, label, seeds[1], crop, config['cat_max_ratio'])
  if config['flip']:
    image, label = random_flip(image, label, seeds[2])
  return normalize(image), label[..., 0]


def create_split(builder, split: str, config: Mapping[str, Any], per_device_batch: int,
                 train: bool, seed: int = 0) -> tf.data.Dataset:
  """Batches of one TFDS split for this process, shaped for pmap.

  Each process reads its own disjoint part of the split (multi-host). Training
  examples are repeated forever, shuffled and augmented with a seed per position
  in the stream (so epochs differ, and the stream is reproducible from `seed`).
  Evaluation examples are only padded to `config['crop_size']` (255 labels), and
  an image larger than that is an error rather than silently cropped; the last
  batch is completed with all-255 examples so that every example is evaluated.

  Args:
    builder: a prepared `tfds.core.DatasetBuilder` with 'image' and 'segmentation_mask'.
    config: config.augment (scale_range, crop_size, cat_max_ratio, flip, label_map).
  Returns:
    A dataset of {'image': [local_devices, per_device_batch, H, W, 3] float32,
    'label': [local_devices, per_device_batch, H, W] int32}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  hide_accelerators_from_tf()
  process_split = tfds.split_for_jax_process(split, drop_remainder=train)
  ds = builder.as_dataset(split=process_split, shuffle_files=False)
  if train:
    ds = ds.repeat().shuffle(16 * per_device_batch * jax.local_device_count(), seed=seed)
  ds = ds.enumerate()

  def prepare(index, example):
    image, label = example['image'], example['segmentation_mask']
    if train:
      example_seed = tf.stack([tf.constant(seed, tf.int64), index])
      image, label = augment(image, label, tf.cast(example_seed, tf.int32), config)
    else:
      crop = config['crop_size']
      tf.debugging.assert_less_equal(tf.shape(image)[:2], tf.constant(crop),
                                     message='evaluation image larger than crop_size')
      image, label = pad_to_crop(tf.cast(image, tf.float32), tf.cast(label, tf.int32), crop)
      image, label = normalize(image), label[..., 0]
    return {'image': image, 'label': label}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  devices = jax.local_device_count()
  if not train:  # pad with all-ignore examples so no example is dropped from a metric
    count = int(ds.cardinality())
    filler = {'image': tf.zeros((*config['crop_size'], 3), tf.float32),
              'label': tf.fill(config['crop_size'], IGNORE_LABEL)}
    padding = (-count) % (devices * per_device_batch)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat(padding))
  ds = ds.batch(per_device_batch, drop_remainder=True).batch(devices, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)
