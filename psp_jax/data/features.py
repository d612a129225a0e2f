"""The example format every psp_jax builder writes and the input pipeline reads."""

import tensorflow_datasets as tfds


def segmentation_features() -> tfds.features.FeaturesDict:
  """'image' [H, W, 3] uint8 (JPEG bytes kept as they are), 'segmentation_mask' [H, W, 1]
  uint8 class ids with 255 = ignore (lossless PNG), and the source 'file_name'."""
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'segmentation_mask': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
      'file_name': tfds.features.Text(),
  })
