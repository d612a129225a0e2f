"""The embedded default dataset: procedural street/harbour scenes where context decides classes.

Every scene has sky, a building on the horizon, a narrow band of ground just below the
horizon that is either water (harbour) or road (street), and below it a wide grey
pavement (a quay or a sidewalk, the same texture in both scenes) on which vehicles stand.
A vehicle is drawn with the same pixels in both scenes and is surrounded by the same
pavement, so nothing within 20+ pixels of it differs: it is a `boat` in a harbour and a
`car` in a street, which only a receptive field reaching the far water/road band can tell
(the paper's boat-vs-car confusion, made to need global context). Small `person` figures
are inconspicuous objects; the building is large enough to exceed a small receptive field.
Images are 128x128, generated deterministically from (split, index) in seconds, through
the same TFDS builder path as the real datasets, so nothing needs downloading.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from psp_jax import classes

CLASS_NAMES, PALETTE = classes.SCENES_CLASS_NAMES, classes.SCENES_PALETTE
SKY, BUILDING, WATER, ROAD, PAVEMENT, BOAT, CAR, PERSON = range(len(CLASS_NAMES))
CONTEXT_CLASSES = ('boat', 'car')  # same appearance and surroundings, class decided by the scene
SIZE = 128
_GAP = 20  # least distance, in pixels, between a vehicle and the water/road band


def _texture(rng, shape, base, noise):
  return np.clip(np.asarray(base, np.float32) + rng.normal(0, noise, shape + (3,)), 0, 255)


def render_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """One scene: ([SIZE, SIZE, 3] uint8 image, [SIZE, SIZE] uint8 label map)."""
  rng = np.random.RandomState(seed)
  image = np.zeros((SIZE, SIZE, 3), np.float32)
  label = np.zeros((SIZE, SIZE), np.uint8)
  horizon = rng.randint(32, 48)
  band = horizon + rng.randint(8, 14)  # the water/road band ends here; pavement below
  harbour = rng.rand() < 0.5
  image[:horizon] = _texture(rng, (horizon, SIZE), (120, 170, 230), 6)
  label[:horizon] = SKY
  ground = (40, 90, 160) if harbour else (95, 95, 100)
  image[horizon:band] = _texture(rng, (band - horizon, SIZE), ground, 10)
  label[horizon:band] = WATER if harbour else ROAD
  image[band:] = _texture(rng, (SIZE - band, SIZE), (150, 150, 140), 8)
  label[band:] = PAVEMENT
  # A large building standing on the horizon.
  left, width = rng.randint(0, SIZE // 2), rng.randint(SIZE // 3, SIZE // 2 + 16)
  top = rng.randint(4, horizon - 16)
  image[top:horizon, left:left + width] = _texture(rng, (horizon - top, min(width, SIZE - left)),
                                                   (150, 110, 90), 12)
  label[top:horizon, left:left + width] = BUILDING
  # Vehicles: identical pixels on identical pavement, far from the band that names them.
  for _ in range(rng.randint(1, 4)):
    h, w = rng.randint(8, 14), rng.randint(16, 28)
    y = rng.randint(band + _GAP, SIZE - h - 2)
    x = rng.randint(2, SIZE - w - 2)
    image[y:y + h, x:x + w] = (200, 40, 40)
    image[y + 2:y + h // 2, x + 3:x + w - 3] = (30, 30, 40)  # windows / cabin
    label[y:y + h, x:x + w] = BOAT if harbour else CAR
  # Small, inconspicuous people (a few pixels each), on the pavement or the building.
  for _ in range(rng.randint(0, 4)):
    y, x = rng.randint(horizon - 10, SIZE - 8), rng.randint(0, SIZE - 3)
    image[y:y + 7, x:x + 3] = (230, 190, 150)
    label[y:y + 7, x:x + 3] = PERSON
  return image.round().astype(np.uint8), label


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
  num_train: int = 4000
  num_validation: int = 500
  seed: int = 0


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
  """Procedural scenes for psp_jax's quickstart and ablation (see the module docstring)."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Sky, building, water/road, boat/car by context, small people.',
      '2.0.0': 'Vehicles on a shared pavement 20+ px from the water/road band: '
               'boat vs car needs global context (1.0.0 decided it 6 px away).',
  }
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
