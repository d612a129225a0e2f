"""The embedded default dataset: wide street/harbour scenes in which only global context
decides six of the ten classes.

A 48x256 scene has sky, buildings on the horizon and, below it, a long grey ground. At one
end (left or right) the ground is water (a harbour) or road (a street): the one cue. The rest
of the ground is quay in a harbour and sidewalk in a street, the same texture (the paper's
confusable categories). On it, at least GAP = 104 pixels from the cue, stand vehicles, which
are boats in a harbour and cars in a street, drawn with the same pixels (its mismatched
relationship), and 16x16 buoys or bollards, also the same pixels (its inconspicuous
objects, 2x2 logit cells at output stride 8). So nothing within 104 px of a boat, car,
buoy or bollard, nor anywhere on the quay/sidewalk far from the cue, differs between the two
scenes. GAP is set at the trained dilated FCN's effective receptive field at this size
(benchmarks/receptive_field.py; the figures are in the README); the pyramid's global bin
covers the whole scene.
Generated deterministically from (split, index) in seconds, through the same TFDS builder
path as the real datasets, so nothing needs downloading.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from psp_jax.data import catalog

CLASS_NAMES, PALETTE = catalog.SYNTHETIC_SCENES.class_names, catalog.SYNTHETIC_SCENES.palette
(SKY, BUILDING, WATER, ROAD, QUAY, SIDEWALK, BOAT, CAR, BUOY, BOLLARD) = range(len(CLASS_NAMES))
# Pairs drawn with the same pixels on the same surroundings; the scene decides which one.
CONTEXT_CLASSES = ('quay', 'sidewalk', 'boat', 'car', 'buoy', 'bollard')
HEIGHT, WIDTH = 48, 256
_CUE_WIDTH = (32, 49)  # columns of water or road at one end of the ground
GAP = 104  # least distance, in pixels, from the water/road to any boat, car, buoy or bollard


def _texture(rng, shape, base, noise):
  return np.clip(np.asarray(base, np.float32) + rng.normal(0, noise, shape + (3,)), 0, 255)


def render_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """One scene: ([HEIGHT, WIDTH, 3] uint8 image, [HEIGHT, WIDTH] uint8 label map)."""
  rng = np.random.RandomState(seed)
  image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
  label = np.zeros((HEIGHT, WIDTH), np.uint8)
  harbour = rng.rand() < 0.5
  horizon = rng.randint(14, 20)
  image[:horizon] = _texture(rng, (horizon, WIDTH), (120, 170, 230), 6)
  label[:horizon] = SKY
  for _ in range(rng.randint(2, 5)):  # buildings anywhere along the horizon
    left, width = rng.randint(0, WIDTH - 24), rng.randint(24, 65)
    top, right = rng.randint(2, horizon - 6), min(left + width, WIDTH)
    image[top:horizon, left:right] = _texture(rng, (horizon - top, right - left),
                                              (150, 110, 90), 12)
    label[top:horizon, left:right] = BUILDING
  ground = HEIGHT - horizon
  image[horizon:] = _texture(rng, (ground, WIDTH), (150, 150, 140), 8)
  label[horizon:] = QUAY if harbour else SIDEWALK
  # The one cue: water or road at one end of the ground.
  cue, at_left = rng.randint(*_CUE_WIDTH), rng.rand() < 0.5
  columns = slice(0, cue) if at_left else slice(WIDTH - cue, WIDTH)
  image[horizon:, columns] = _texture(rng, (ground, cue),
                                      (40, 90, 160) if harbour else (95, 95, 100), 10)
  label[horizon:, columns] = WATER if harbour else ROAD
  # Objects stand at the other end, at least GAP pixels from the cue.
  low, high = (cue + GAP, WIDTH) if at_left else (0, WIDTH - cue - GAP)
  for _ in range(rng.randint(1, 4)):  # boats / cars
    h, w = rng.randint(12, 17), rng.randint(20, 33)
    y, x = rng.randint(horizon + 1, HEIGHT - h), rng.randint(low, high - w + 1)
    image[y:y + h, x:x + w] = (200, 40, 40)
    image[y + 2:y + h // 2, x + 3:x + w - 3] = (30, 30, 40)  # windows / cabin
    label[y:y + h, x:x + w] = BOAT if harbour else CAR
  for _ in range(rng.randint(2, 6)):  # buoys / bollards: 16x16 px, two by two logit cells
    y, x = rng.randint(horizon, HEIGHT - 15), rng.randint(low, high - 15)
    image[y:y + 16, x:x + 16] = (250, 225, 40)
    image[y + 6:y + 10, x:x + 16] = (20, 20, 20)  # a black band
    label[y:y + 16, x:x + 16] = BUOY if harbour else BOLLARD
  return image.round().astype(np.uint8), label


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
  num_train: int = 4000
  num_validation: int = 500
  seed: int = 0


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
  """Procedural scenes for psp_jax's quickstart and ablation (see the module docstring)."""

  VERSION = tfds.core.Version('3.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Sky, building, water/road, boat/car by context, small people.',
      '2.0.0': 'Vehicles on a shared pavement 20+ px from the water/road band: '
               'boat vs car needs global context (1.0.0 decided it 6 px away).',
      '3.0.0': '48x256 scenes, 10 classes: quay/sidewalk, boat/car and buoy/bollard '
               'decided by water/road 104+ px away, beyond the FCN\'s effective receptive '
               'field (2.0.0: within it, FCN and PSPNet were equal).',
  }
  BUILDER_CONFIGS = [
      ScenesConfig(name='default', description='4000 train / 500 validation scenes.'),
      ScenesConfig(name='tiny', description='For tests.', num_train=6, num_validation=3),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(HEIGHT, WIDTH, 3)),
            'segmentation_mask': tfds.features.Image(shape=(HEIGHT, WIDTH, 1)),
            'scene': tfds.features.ClassLabel(names=['road', 'water']),
        }),
        supervised_keys=('image', 'segmentation_mask'),
        description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {
        'train': self._generate_examples(config.seed, config.num_train),
        'validation': self._generate_examples(config.seed + 1, config.num_validation),
    }

  def _generate_examples(self, seed, count):
    for index in range(count):
      image, label = render_scene((seed * 1_000_003 + index) % 2**32)
      yield index, {'image': image, 'segmentation_mask': label[..., None],
                    'scene': 'water' if (label == WATER).any() else 'road'}
