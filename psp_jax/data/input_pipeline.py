"""tf.data input pipeline: sharded, seeded, batched training streams from TFDS, for pmap.

TensorFlow only decodes and augments on the host CPU: `hide_accelerators_from_tf`
runs before any dataset is built, so TF never claims memory on a GPU/TPU that JAX owns.
"""

from typing import Any, Callable, Mapping, Optional, Tuple

import jax
import tensorflow as tf

from psp_jax.base import errors, spec
from psp_jax.data import augment, checks, records


def hide_accelerators_from_tf() -> None:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


Decode = Callable[[Mapping[str, tf.Tensor]], Tuple[tf.Tensor, tf.Tensor]]


def create_split(builder, split: str, config: Mapping[str, Any], per_device_batch: int,
                 seed: int = 0, decode: Optional[Decode] = None,
                 position: int = 0) -> tf.data.Dataset:
  """Training batches of one TFDS split for this process, shaped for pmap.

  Every device (of all processes) reads its own disjoint shard of the split, epoch after
  epoch, each epoch a permutation of the shard drawn from (seed, device, epoch), and
  augments example p of its stream with a seed drawn from (seed, device, p). Example p
  is thus a function of p alone, so the stream's position is one number, `position`, and
  a stream started there is the tail of the stream started at 0. The batches depend on
  `seed` and the global device count only: 2 processes of 2 devices see what 1 process
  of 4 devices sees.

  Args:
    builder: a prepared `tfds.core.DatasetBuilder`, stored as TFRecord (TFDS's default).
    config: config.augment; its keys are listed in `augment.augment`.
    decode: maps one example of `builder` to (image [H, W, 3] uint8, label [H, W, 1]), for
      datasets whose labels need mapping first (Cityscapes' label ids to train ids). None
      reads (example['image'], example['segmentation_mask']).
    position: examples each device has consumed already (a resumed run's saved position).
  Returns:
    A dataset of spec batches with a leading device axis: {'image': [local_devices,
    per_device_batch, H, W, 3] float32, 'label': [local_devices, per_device_batch, H, W] int32}.
  """
  hide_accelerators_from_tf()
  features = builder.info.features
  read = decode or checks.read_example
  stored = records.split_records(builder, split)

  def prepare(example_seed, index):
    image, label = read(features.deserialize_example(stored.read(index)))
    image = tf.ensure_shape(image, [None, None, 3])
    image, label = augment.augment(image, label, example_seed, config)
    return {spec.IMAGE: image, spec.LABEL: label}

  num_devices = jax.device_count()
  if stored.num_examples < num_devices:
    raise errors.InputError(f'{builder.info.full_name} {split} has {stored.num_examples} '
                            f'examples, fewer than the {num_devices} devices that each read '
                            'their own shard of it.')
  streams = []
  for device in jax.local_devices():
    index = jax.devices().index(device)
    device_seed = tf.constant([seed, index], tf.int64)
    first, end = shard_bounds(stored.num_examples, num_devices, index)
    positions = tf.data.Dataset.range(position, _ENDLESS)
    ds = positions.map(
        lambda p, s=device_seed, first=first, size=end - first: prepare(
            tf.random.experimental.stateless_fold_in(s, p),
            first + shard_order(p, size, s)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    streams.append(ds.batch(per_device_batch, drop_remainder=True))
  ds = tf.data.Dataset.zip(tuple(streams)).map(
      lambda *batches: tf.nest.map_structure(lambda *x: tf.stack(x), *batches))
  return ds.prefetch(tf.data.AUTOTUNE)


_ENDLESS = 2 ** 62  # positions: no run reaches it


def shard_bounds(num_examples: int, num_devices: int, device: int) -> tuple[int, int]:
  """[first, end) of the examples device `device` of `num_devices` reads (TFDS's even_splits)."""
  return device * num_examples // num_devices, (device + 1) * num_examples // num_devices


def shard_order(position: tf.Tensor, size: int, device_seed: tf.Tensor) -> tf.Tensor:
  """The index within a shard of `size` examples of stream position `position` (int64).

  Epoch e = position // size visits the shard in the permutation drawn from
  (device_seed, e), computed for one position without materialising it.
  """
  epoch, offset = position // size, position % size
  # -1: a stream of seeds of its own, apart from the augmentation's (positions p >= 0).
  order_seed = tf.random.experimental.stateless_fold_in(device_seed, -1)
  epoch_seed = tf.random.experimental.stateless_fold_in(order_seed, epoch)
  return tf.random.experimental.index_shuffle(offset, epoch_seed,
                                              tf.constant(size - 1, tf.int64))
