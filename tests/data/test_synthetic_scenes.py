"""The embedded default dataset through TFDS's own builder test machinery."""

import os

import numpy as np
import tensorflow_datasets as tfds

from psp_jax.data.builders import synthetic_scenes as scenes


class SyntheticScenesTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = scenes.SyntheticScenes
  BUILDER_CONFIG_NAMES_TO_TEST = ['tiny']
  SPLITS = {'train': 6, 'validation': 3}
  SKIP_CHECKSUMS = True
  # The scenes are generated, not downloaded: there is no archive to fake, and TFDS only
  # needs the folder to exist.
  EXAMPLE_DIR = os.path.dirname(os.path.abspath(__file__))


def test_scenes_are_deterministic():
  for a, b in zip(scenes.render_scene(5), scenes.render_scene(5)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(scenes.render_scene(5)[0], scenes.render_scene(6)[0])


HARBOUR = (scenes.QUAY, scenes.BOAT, scenes.BUOY)
STREET = (scenes.SIDEWALK, scenes.CAR, scenes.BOLLARD)


def test_only_the_far_water_or_road_tells_the_look_alikes_apart():
  colours = {kind: {True: set(), False: set()} for kind in ('vehicle', 'small')}
  ground = {True: [], False: []}
  for seed in range(60):
    image, label = scenes.render_scene(seed)
    assert image.shape == (scenes.HEIGHT, scenes.WIDTH, 3) and label.shape == image.shape[:2]
    assert set(np.unique(label)) <= set(range(len(scenes.CLASS_NAMES)))
    harbour = (label == scenes.WATER).any()
    assert harbour != (label == scenes.ROAD).any()  # exactly one of them
    present = set(np.unique(label).tolist())
    assert (scenes.QUAY if harbour else scenes.SIDEWALK) in present
    assert not present & set(STREET if harbour else HARBOUR)  # the scene decides every pair
    # Every look-alike object pixel is >= GAP columns from every water/road pixel.
    cue_columns = np.nonzero(np.isin(label, (scenes.WATER, scenes.ROAD)).any(axis=0))[0]
    objects = np.isin(label, (scenes.BOAT, scenes.CAR, scenes.BUOY, scenes.BOLLARD))
    distance = np.abs(np.nonzero(objects)[1][:, None] - cue_columns[None]).min(axis=1)
    assert distance.min() >= scenes.GAP
    for kind, pair in (('vehicle', (scenes.BOAT, scenes.CAR)),
                       ('small', (scenes.BUOY, scenes.BOLLARD))):
      pixels = image[np.isin(label, pair)].reshape(-1, 3)
      colours[kind][harbour].update(map(tuple, pixels))
    ground[harbour].append(image[np.isin(label, (scenes.QUAY, scenes.SIDEWALK))])
  # Boats and cars, buoys and bollards are drawn with the very same colours ...
  for kind in colours:
    assert colours[kind][True] == colours[kind][False] and colours[kind][True]
  # ... and quay and sidewalk with the same texture: same mean and spread per channel.
  quay, sidewalk = (np.concatenate(ground[h]).astype(np.float64) for h in (True, False))
  np.testing.assert_allclose(quay.mean(0), sidewalk.mean(0), atol=0.3)
  np.testing.assert_allclose(quay.std(0), sidewalk.std(0), atol=0.3)
