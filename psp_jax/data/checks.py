"""Bad data reported where it enters, naming the files.

A label outside the classes or of another size than its image (`decoder`), an image that
does not decode (`name_corrupt_images`), a prepared dataset that would stop training
(`check_stored`). A dataset that is not prepared: `psp_jax.data.dataset.Dataset.check_prepared`.
"""

from typing import Iterable, Iterator

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from psp_jax.base import errors, spec


def read_example(example):
  """(image, segmentation_mask) of an example in psp_jax's own format (features.py)."""
  return example[spec.IMAGE_FEATURE], example[spec.LABEL_FEATURE]


# The feature naming an example's source file: ours (features.py), Cityscapes' (TFDS's).
FILE_NAME_KEYS = (spec.FILE_NAME_FEATURE, 'image_id')


def file_name(example) -> tf.Tensor:
  """The example's source file, for errors; synthetic scenes have none."""
  for key in FILE_NAME_KEYS:
    if key in example:
      return example[key]
  return tf.constant('(an example without a file name)')


def check_example(image: tf.Tensor, label: tf.Tensor, num_classes: int,
                  source: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(image, label) unchanged, or the pipeline fails naming `source` and the bad values.

  A label must be class ids in [0, num_classes) or 255 = ignore, at the image's size:
  anything else would be trained on or scored as a wrong class, or crash a reshape later.

  Args:
    image: [H, W, 3]. label: [H', W', 1] int, after the dataset's mapping (`decode`).
    num_classes: the dataset's. source: scalar string, the example's file name.
  Returns:
    (image, label), depending on the checks so that tf.data runs them.
  """
  image_size, label_size = tf.shape(image)[:2], tf.shape(label)[:2]
  same_size = tf.debugging.Assert(tf.reduce_all(tf.equal(image_size, label_size)), [
      tf.strings.join([source, tf.strings.format(
          ': label size {} differs from image size {} (height, width). Pair each image with '
          'its own label map and prepare the dataset again.', (label_size, image_size))])])
  values = tf.reshape(tf.cast(label, tf.int32), [-1])
  bad = (values < 0) | ((values >= num_classes) & (values != spec.IGNORE_LABEL))
  bad_values = tf.sort(tf.unique(tf.boolean_mask(values, bad))[0])  # empty (cheap) if valid
  in_range = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [
      tf.strings.join([source, tf.strings.format(
          f': label values {{}} are neither class ids in [0, {num_classes}) nor the ignore '
          'label 255. Map them to class ids in the decode of the dataset (as Cityscapes ids '
          'to train ids), or fix the label files.', bad_values, summarize=20)])])
  with tf.control_dependencies([same_size, in_range]):
    return tf.identity(image), tf.identity(label)


def decoder(num_classes: int, read=read_example):
  """example -> (image, label) by `read` (e.g. Cityscapes ids -> train ids), checked
  against `num_classes` by `check_example`."""
  def decode(example):
    image, label = read(example)
    return check_example(image, label, num_classes, file_name(example))
  return decode


def image_features(builder: tfds.core.DatasetBuilder) -> list[str]:
  """The keys of `builder`'s image features (images and label maps): those TFDS decodes."""
  return [key for key, feature in builder.info.features.items()
          if isinstance(feature, tfds.features.Image)]


def corrupt_images(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
  """'<file name> (<feature>)' of every image or label map in `split` that does not decode,
  or not to the shape its feature declares.

  Reads the stored bytes and decodes each with the feature's own decoder (as_dataset's),
  one at a time, so a failure can be pinned on its example: a pass over the whole split.
  """
  features = builder.info.features
  images = image_features(builder)
  stored = builder.as_dataset(split=split, shuffle_files=False,
                              decoders={key: tfds.decode.SkipDecoding() for key in images})
  corrupt = []
  for index, example in enumerate(stored):
    for key in images:
      try:
        features[key].decode_example(example[key])
      except (tf.errors.InvalidArgumentError, ValueError):  # ValueError: another shape
        name = next((example[k].numpy().decode() for k in FILE_NAME_KEYS if k in example),
                    f'example {index}')
        corrupt.append(f'{name} ({key})')
  return sorted(corrupt)


def check_stored(builder: tfds.core.DatasetBuilder) -> None:
  """Raises InputError listing every stored image or label map that would stop training.

  psp_jax's own builders decode each image and label while preparing; a builder psp_jax
  does not write (TFDS's Cityscapes) stores files unread, so this decodes its splits once
  after preparing. The prepared folder is deleted on failure, so the next run prepares
  (and checks) again rather than training on it.
  """
  problems = [f'{split}: {p}' for split in builder.info.splits
              for p in corrupt_images(builder, split)]
  if problems:
    tf.io.gfile.rmtree(str(builder.data_dir))
    raise errors.InputError(
        f'{builder.info.full_name}: {len(problems)} stored image(s) would stop training: '
        f'{"; ".join(problems[:10])}{" ..." if len(problems) > 10 else ""}. Replace the '
        'damaged file(s) in the source archives and run again: the dataset (deleted) is '
        'prepared again.')


def name_corrupt_images(batches: Iterable, builder: tfds.core.DatasetBuilder,
                        split: str) -> Iterator:
  """Yields from `batches`, read from `split` of `builder`, naming any image that fails to decode.

  TFDS decodes inside tf.data, where a damaged file fails with TensorFlow's bare decode
  error; this re-raises it as a ValueError listing the files (`corrupt_images`).
  """
  try:
    yield from batches
  except tf.errors.InvalidArgumentError as error:
    if 'Decode' not in str(error):  # a decode op (DecodeImage, DecodePng) failed
      raise
    logging.error('An image of %s %s does not decode; looking for it (reads the whole split).',
                  builder.info.full_name, split)
    corrupt = corrupt_images(builder, split)
    if not corrupt:
      raise
    raise errors.InputError(
        f'{builder.info.full_name} {split}: {len(corrupt)} stored image(s) do not decode: '
        f'{", ".join(corrupt[:10])}{" ..." if len(corrupt) > 10 else ""}. Replace the damaged '
        f'file(s) in the source archives, delete {builder.data_dir} and prepare it again.'
    ) from error
