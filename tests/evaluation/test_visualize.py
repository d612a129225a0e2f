"""predict.py's pictures: the overlay made in blocks of rows is the one made at once."""

import numpy as np

from psp_jax.evaluation import visualize


def test_overlay_in_blocks_of_rows_is_the_blend_of_the_whole_image():
  rng = np.random.RandomState(0)
  image = rng.randint(0, 256, (37, 11, 3)).astype(np.uint8)
  colours = visualize.colorize(rng.randint(0, 4, (37, 11)), [[0, 0, 0], [255, 0, 0],
                                                             [0, 255, 0], [9, 8, 7]])
  whole = np.round(0.5 * image.astype(np.float32) + 0.5 * colours.astype(np.float32))
  blended = visualize.overlay(image, colours, rows=5)
  assert blended.dtype == np.uint8
  np.testing.assert_array_equal(blended, whole.astype(np.uint8))
