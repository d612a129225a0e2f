"""tf.data input pipeline: sharded, seeded, batched training streams from TFDS, for pmap.

TensorFlow only decodes and augments on the host CPU: `hide_accelerators_from_tf`
runs before any dataset is built, so TF never claims memory on a GPU/TPU that JAX owns.
"""

from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from psp_jax import augment, errors, spec
from psp_jax.datasets import checks


def hide_accelerators_from_tf() -> None:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


Decode = Callable[[Mapping[str, tf.Tensor]], Tuple[tf.Tensor, tf.Tensor]]


def create_split(builder, split: str, config: Mapping[str, Any], per_device_batch: int,
                 seed: int = 0, decode: Optional[Decode] = None) -> tf.data.Dataset:
  """Training batches of one TFDS split for this process, shaped for pmap.

  Every device (of all processes) reads its own disjoint shard of the split,
  repeated forever, shuffled and augmented with a seed per (device, position), so the
  batches depend on `seed` and the global device count only: 2 processes of 2 devices
  see what 1 process of 4 devices sees. Images are decoded after the shuffle, whose
  buffer (saved with each checkpoint, see resumable_iterator) then holds encoded files.

  Args:
    builder: a prepared `tfds.core.DatasetBuilder`.
    config: config.augment; its keys are listed in `augment.augment`.
    decode: maps one example of `builder` to (image [H, W, 3] uint8, label [H, W, 1]), for
      datasets whose labels need mapping first (Cityscapes' label ids to train ids). None
      reads (example['image'], example['segmentation_mask']).
  Returns:
    A dataset of spec batches with a leading device axis: {'image': [local_devices,
    per_device_batch, H, W, 3] float32, 'label': [local_devices, per_device_batch, H, W] int32}.
  """
  hide_accelerators_from_tf()
  features = builder.info.features
  images = checks.image_features(builder)
  skip_decoding = {k: tfds.decode.SkipDecoding() for k in images}
  read = decode or checks.read_example

  def prepare(example_seed, example):
    example = {k: features[k].decode_example(v) if k in images else v
               for k, v in example.items()}
    image, label = read(example)
    image = tf.ensure_shape(image, [None, None, 3])
    image, label = augment.augment(image, label, example_seed, config)
    return {spec.IMAGE: image, spec.LABEL: label}

  num_devices = jax.device_count()
  if builder.info.splits[split].num_examples < num_devices:
    raise errors.InputError(f'{builder.info.full_name} {split} has '
                            f'{builder.info.splits[split].num_examples} examples, fewer than the '
                            f'{num_devices} devices that each read their own shard of it.')
  shards = tfds.even_splits(split, n=num_devices, drop_remainder=False)
  streams = []
  for device in jax.local_devices():
    index = jax.devices().index(device)
    ds = builder.as_dataset(split=shards[index], shuffle_files=False, decoders=skip_decoding)
    ds = ds.repeat().shuffle(16 * per_device_batch, seed=seed * num_devices + index)
    device_seed = tf.constant([seed, index], tf.int64)
    ds = ds.enumerate().map(
        lambda i, example, s=device_seed: prepare(
            tf.random.experimental.stateless_fold_in(s, i), example),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    streams.append(ds.batch(per_device_batch, drop_remainder=True))
  ds = tf.data.Dataset.zip(tuple(streams)).map(
      lambda *batches: tf.nest.map_structure(lambda *x: tf.stack(x), *batches))
  return ds.prefetch(tf.data.AUTOTUNE)
