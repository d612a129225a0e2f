"""The embedded default dataset: procedural street/harbour scenes where context decides classes.

Every scene has sky, a building and a ground that is either water or road. A vehicle
is drawn with the same pixels in both scenes and wrapped in a neutral grey halo, so
its immediate surroundings say nothing: it is a `boat` on water and a `car` on road,
which only a receptive field reaching the ground around the halo can tell (the
paper's boat-vs-car confusion). Small `person` blobs are inconspicuous objects; the
building is large enough to exceed a small receptive field. Images are 128x128,
generated deterministically from (split, index) in seconds, through the same
TFDS builder path as the real datasets, so nothing needs downloading.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ('sky', 'building', 'water', 'road', 'boat', 'car', 'person')
SKY, BUILDING, WATER, ROAD, BOAT, CAR, PERSON = range(len(CLASS_NAMES))
CONTEXT_CLASSES = ('boat', 'car')  # same appearance, class decided by the scene
SIZE = 128
_HALO = 6  # pixels of neutral grey around each vehicle


def _texture(rng, shape, base, noise):
  return np.clip(np.asarray(base, np.float32) + rng.normal(0, noise, shape + (3,)), 0, 255)


def render_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """One scene: ([SIZE, SIZE, 3] uint8 image, [SIZE, SIZE] uint8 label map)."""
  rng = np.random.RandomState(seed)
  image = np.zeros((SIZE, SIZE, 3), np.float32)
  label = np.zeros((SIZE, SIZE), np.uint8)
  horizon = rng.randint(40, 64)
  on_water = rng.rand() < 0.5
  image[:horizon] = _texture(rng, (horizon, SIZE), (120, 170, 230), 6)
  label[:horizon] = SKY
  ground = (40, 90, 160) if on_water else (95, 95, 100)
  image[horizon:] = _texture(rng, (SIZE - horizon, SIZE), ground, 10)
  label[horizon:] = WATER if on_water else ROAD
  # A large building standing on the horizon.
  left, width = rng.randint(0, SIZE // 2), rng.randint(SIZE // 3, SIZE // 2 + 16)
  top = rng.randint(4, horizon - 20)
  image[top:horizon, left:left + width] = _texture(rng, (horizon - top, min(width, SIZE - left)),
                                                   (150, 110, 90), 12)
  label[top:horizon, left:left + width] = BUILDING
  # Vehicles: identical pixels on water and road, behind a neutral halo.
  for _ in range(rng.randint(1, 4)):
    h, w = rng.randint(8, 14), rng.randint(16, 28)
    y = rng.randint(horizon + _HALO, SIZE - h - _HALO)
    x = rng.randint(_HALO, SIZE - w - _HALO)
    image[y - _HALO:y + h + _HALO, x - _HALO:x + w + _HALO] = 128
    label[y - _HALO:y + h + _HALO, x - _HALO:x + w + _HALO] = WATER if on_water else ROAD
    image[y:y + h, x:x + w] = (200, 40, 40)
    image[y + 2:y + h // 2, x + 3:x + w - 3] = (30, 30, 40)  # windows / cabin
    label[y:y + h, x:x + w] = BOAT if on_water else CAR
  # Small, inconspicuous people (a few pixels each), on the ground or the building.
  for _ in range(rng.randint(0, 4)):
    y, x = rng.randint(horizon - 8, SIZE - 6), rng.randint(0, SIZE - 3)
    image[y:y + 5, x:x + 2] = (230, 190, 150)
    label[y:y + 5, x:x + 2] = PERSON
  return image.round().astype(np.uint8), label


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
  num_train: int = 4000
  num_validation: int = 500
  seed: int = 0


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
  """Procedural scenes for psp_jax's quickstart and ablation (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Sky, building, water/road, boat/car by context, small people.'}
  BUILDER_CONFIGS = [
      ScenesConfig(name='default', description='4000 train / 500 validation scenes.'),
      ScenesConfig(name='tiny', description='For tests.', num_train=6, num_validation=3),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(SIZE, SIZE, 3)),
            'segmentation_mask': tfds.features.Image(shape=(SIZE, SIZE, 1)),
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
