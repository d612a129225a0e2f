"""The embedded default dataset through TFDS's own builder test machinery."""

import os

import numpy as np
import tensorflow_datasets as tfds

from psp_jax.datasets import synthetic_scenes as scenes


class SyntheticScenesTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = scenes.SyntheticScenes
  BUILDER_CONFIG_NAMES_TO_TEST = ['tiny']
  SPLITS = {'train': 6, 'validation': 3}
  SKIP_CHECKSUMS = True
  # The scenes are generated, not downloaded: there is no archive to fake.
  EXAMPLE_DIR = os.path.join(os.path.dirname(__file__), 'data')


def test_scenes_are_deterministic_and_context_decides_vehicle_class():
  image_a, label_a = scenes.render_scene(5)
  image_b, label_b = scenes.render_scene(5)
  np.testing.assert_array_equal(image_a, image_b)
  np.testing.assert_array_equal(label_a, label_b)
  seen = {True: set(), False: set()}
  vehicle_pixels = {}
  for seed in range(40):
    image, label = scenes.render_scene(seed)
    on_water = (label == scenes.WATER).any()
    assert not ((label == scenes.WATER).any() and (label == scenes.ROAD).any())
    vehicle = np.isin(label, (scenes.BOAT, scenes.CAR))
    seen[on_water].update(np.unique(label[vehicle]).tolist())
    vehicle_pixels[on_water] = np.unique(image[vehicle].reshape(-1, 3), axis=0)
  assert seen == {True: {scenes.BOAT}, False: {scenes.CAR}}
  # The only cue is far away: every vehicle row is >= _GAP rows below the water/road band.
  for seed in range(40):
    _, label = scenes.render_scene(seed)
    band_rows = np.nonzero(np.isin(label, (scenes.WATER, scenes.ROAD)).any(axis=1))[0]
    vehicle_rows = np.nonzero(np.isin(label, (scenes.BOAT, scenes.CAR)).any(axis=1))[0]
    assert vehicle_rows.min() - band_rows.max() > scenes._GAP
  # Boats and cars are drawn with the very same colours.
  np.testing.assert_array_equal(vehicle_pixels[True], vehicle_pixels[False])
  assert set(np.unique(label)) <= set(range(len(scenes.CLASS_NAMES)))
