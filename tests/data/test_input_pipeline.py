"""Augmentation keeps image and label aligned and pads labels with 255."""

import colorsys

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from psp_jax.base import spec
from psp_jax.data import augment as aug, input_pipeline

CONFIG = dict(scale_range=(0.5, 2.0), crop_size=(48, 64), cat_max_ratio=0.75, flip=True)
# Every augmentation on, at semseg's rotation and blur and mmseg's photometric distortion.
FULL = dict(CONFIG, rotate_degrees=10, rotate_prob=0.5, blur_prob=0.5, photometric=True)


def _blocks(h=40, w=56, seed=0):
  """A label map of 8x8 blocks and an image whose red channel encodes it."""
  rng = np.random.RandomState(seed)
  label = np.kron(rng.randint(0, 6, (h // 8, w // 8)), np.ones((8, 8), np.int64))
  image = np.stack([label * 40, np.full_like(label, 7), np.full_like(label, 9)], -1)
  return image.astype(np.uint8), label[..., None].astype(np.uint8)


def _decode_red(image):
  return image[..., 0] * spec.STDDEV_RGB[0] + spec.MEAN_RGB[0]


@pytest.mark.parametrize('seed', range(6))
def test_crop_flip_and_rescale_keep_image_and_label_aligned(seed):
  image, label = _blocks(seed=seed)
  out_image, out_label = aug.augment(image, label, tf.constant([seed, 1]), CONFIG)
  out_image, out_label = out_image.numpy(), out_label.numpy()
  assert out_image.shape == (48, 64, 3) and out_label.shape == (48, 64)
  assert out_label.dtype == np.int32
  labelled = out_label != 255
  # The image value nearest the label's code: bilinear image vs nearest label can only
  # disagree at block edges (a misaligned or unflipped label agrees ~1 time in 6).
  agree = np.abs(_decode_red(out_image)[labelled] - 40 * out_label[labelled]) < 20
  assert agree.mean() > 0.9, agree.mean()
  padded = ~labelled
  np.testing.assert_allclose(out_image[padded], 0.0, atol=1e-5)  # mean padding -> 0


def test_without_rescale_alignment_is_exact_and_padding_is_255():
  image, label = _blocks(h=40, w=56)
  config = dict(CONFIG, scale_range=None, cat_max_ratio=1.0)
  out_image, out_label = aug.augment(image, label, tf.constant([3, 4]), config)
  out_image, out_label = out_image.numpy(), out_label.numpy()
  # 40x56 padded to 48x64: 8 rows and 8 columns of ignore.
  assert (out_label == 255).sum() == 48 * 64 - 40 * 56
  labelled = out_label != 255
  np.testing.assert_allclose(_decode_red(out_image)[labelled], 40 * out_label[labelled],
                             atol=1e-3)


@pytest.mark.parametrize('config', [CONFIG, FULL], ids=['first_release', 'full'])
def test_augmentation_is_deterministic_given_the_seed(config):
  image, label = _blocks(h=96, w=128)
  a = aug.augment(image, label, tf.constant([7, 7]), config)
  b = aug.augment(image, label, tf.constant([7, 7]), config)
  c = aug.augment(image, label, tf.constant([7, 8]), config)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


def test_cat_max_ratio_avoids_crops_of_one_class():
  label = np.zeros((64, 256, 1), np.uint8)
  label[:, 200:] = 1  # class 0 covers 78% of the image
  image = np.zeros((64, 256, 3), np.uint8)
  config = dict(CONFIG, scale_range=None, flip=False, crop_size=(64, 64), cat_max_ratio=0.75)
  mixed = 0
  for seed in range(20):
    _, out_label = aug.augment(image, label, tf.constant([seed, 0]), config)
    counts = np.bincount(out_label.numpy().ravel(), minlength=2)
    mixed += counts.min() > 0 and counts.max() / counts.sum() < 0.75
  assert mixed >= 15  # without the retries about 1 crop in 3 would be mixed


@pytest.fixture(scope='module')
def tiny_scenes(tmp_path_factory):
  from psp_jax.data.builders import synthetic_scenes
  builder = synthetic_scenes.SyntheticScenes(config='tiny',
                                             data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare()
  return builder


def test_create_split_batches_tfds_data_for_pmap(tiny_scenes):
  import jax
  from psp_jax.data.builders import synthetic_scenes
  builder = tiny_scenes
  config = dict(CONFIG, crop_size=(64, 64))
  train = input_pipeline.create_split(builder, 'train', config, per_device_batch=2, seed=1)
  batches = list(train.take(4).as_numpy_iterator())  # 4 x 8 > 6 examples: repeats
  n = jax.local_device_count()
  assert batches[0]['image'].shape == (n, 2, 64, 64, 3)
  assert batches[0]['label'].shape == (n, 2, 64, 64) and batches[0]['label'].dtype == np.int32
  again = list(input_pipeline.create_split(builder, 'train', config, 2, seed=1).take(4)
               .as_numpy_iterator())
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a['label'], b['label'])
  labels = np.unique(np.concatenate([b['label'].ravel() for b in batches]))
  assert set(labels) <= set(range(len(synthetic_scenes.CLASS_NAMES))) | {255}


def test_create_split_reads_examples_through_decode(tiny_scenes):
  """A dataset's own decode (Cityscapes: label ids to train ids) feeds the stream."""
  def decode(example):
    mask = example['segmentation_mask']
    return example['image'], tf.where(mask == 255, mask, mask + 10)

  config = dict(CONFIG, crop_size=(128, 128))
  train = input_pipeline.create_split(tiny_scenes, 'train', config, 1, seed=1, decode=decode)
  for ds in (train.take(3),):
    labels = np.unique(np.concatenate([b['label'].ravel() for b in ds.as_numpy_iterator()]))
    assert set(labels) <= set(range(10, 20)) | {255} and labels.min() >= 10, labels


def _rotate(image, label, degrees):
  out_image, out_label = aug.rotate(tf.cast(image, tf.float32), tf.cast(label, tf.int32), degrees)
  return out_image.numpy(), out_label.numpy()


@pytest.mark.parametrize('degrees, k', [(90, 1), (-90, -1), (180, 2)])
def test_rotate_turns_counter_clockwise_by_the_angle(degrees, k):
  """On a square grid a turn by a multiple of 90 degrees about the centre is exact."""
  rng = np.random.RandomState(0)
  image = rng.randint(0, 256, (6, 6, 3)).astype(np.float32)
  label = rng.randint(0, 5, (6, 6, 1))
  out_image, out_label = _rotate(image, label, degrees)
  np.testing.assert_allclose(out_image, np.rot90(image, k), atol=1e-3)
  np.testing.assert_array_equal(out_label, np.rot90(label, k))


def _agreement(red, label):
  """Share of labelled pixels whose red value (0-255 units, [H, W]) encodes their label."""
  labelled = label != 255
  return (np.abs(red[labelled] - 40 * label[labelled]) < 20).mean()


def test_rotation_keeps_image_and_label_aligned_and_pads_the_corners():
  image, label = _blocks(h=40, w=56)
  out_image, out_label = _rotate(image, label, 10)
  out_label = out_label[..., 0]
  assert _agreement(out_image[..., 0], out_label) > 0.9
  _, turned_back = _rotate(image, label, -10)  # control: a misaligned label fails the check
  assert _agreement(out_image[..., 0], turned_back[..., 0]) < 0.8
  # A 10-degree turn brings every corner in from 3+ pixels outside: pure padding.
  for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
    assert out_label[corner] == 255
    np.testing.assert_allclose(out_image[corner], spec.MEAN_RGB, atol=1e-3)
  assert (out_label == 255).mean() < 0.2


@pytest.mark.parametrize('degrees', [7.5, -20.0])
def test_rotate_matches_semseg_warp_affine(degrees):
  """cv2.warpAffine as semseg's RandRotate calls it, about mmcv's pixel-grid centre."""
  cv2 = pytest.importorskip('cv2')
  h, w = 30, 40
  y, x = np.mgrid[:h, :w]
  image = np.stack([100 + 80 * np.sin(x / 5), 100 + 80 * np.cos(y / 4), 3.0 * x], -1)
  image = image.astype(np.float32)
  label = ((x // 7 + y // 6) % 5).astype(np.uint8)
  matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1)
  expected_image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=spec.MEAN_RGB)
  expected_label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=255)
  out_image, out_label = _rotate(image, label[..., None], degrees)
  np.testing.assert_allclose(out_image, expected_image, atol=0.05)  # OpenCV: 1/32-pixel steps
  assert (out_label[..., 0] == expected_label).mean() > 0.99


def test_random_rotate_and_blur_draw_from_the_seed_with_their_probability():
  image, label = _blocks(h=40, w=56)
  image, label = tf.cast(image, tf.float32), tf.cast(label, tf.int32)
  rotated, blurred = [], []
  for seed in range(16):
    out_image, out_label = aug.random_rotate(image, label, tf.constant([seed, 0]), 10, 0.5)
    rotated.append(out_label.numpy().tobytes())
    blurred.append(not np.array_equal(aug.random_blur(image, tf.constant([seed, 0]), 0.5), image))
  turned = [r for r in rotated if r != label.numpy().tobytes()]
  assert 4 <= len(turned) <= 12 and len(set(turned)) == len(turned)  # a new angle each time
  assert 4 <= sum(blurred) <= 12


@pytest.mark.parametrize('seed', range(4))
def test_augment_with_rotation_keeps_image_and_label_aligned(seed):
  image, label = _blocks(seed=seed)
  config = dict(CONFIG, rotate_degrees=10, rotate_prob=1.0)
  out_image, out_label = aug.augment(image, label, tf.constant([seed, 1]), config)
  red = _decode_red(out_image.numpy())
  # Lower than without rotation: shrunk to 4 pixels, blocks have many slanted edge pixels
  # where bilinear image and nearest label differ. A misaligned label agrees < 1 time in 4.
  assert _agreement(red, out_label.numpy()) > 0.8
  _, other_label = aug.augment(image, label, tf.constant([seed, 2]), config)
  assert _agreement(red, other_label.numpy()) < 0.5
  plain_image, _ = aug.augment(image, label, tf.constant([seed, 1]), CONFIG)
  assert not np.allclose(out_image, plain_image)  # it did rotate


def test_missing_or_off_new_keys_augment_as_before():
  """Older configs (no new keys, plain dict or ConfigDict) keep their augmentation."""
  image, label = _blocks(h=96, w=128)
  seed = tf.constant([5, 6])
  before = aug.augment(image, label, seed, CONFIG)
  for config in (ml_collections.ConfigDict(CONFIG),
                 dict(CONFIG, rotate_degrees=None, blur_prob=None, photometric=False),
                 dict(CONFIG, rotate_degrees=10, rotate_prob=0.0, blur_prob=0.0)):
    after = aug.augment(image, label, seed, config)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_blur_keeps_a_constant_image_and_spreads_an_impulse_into_opencvs_kernel():
  constant = np.full((9, 12, 3), 77.0, np.float32)
  np.testing.assert_allclose(aug.gaussian_blur(constant), constant, rtol=1e-6)
  impulse = np.zeros((11, 11, 3), np.float32)
  impulse[5, 5] = 1.0
  out = aug.gaussian_blur(impulse).numpy()
  # cv2.getGaussianKernel(5, 0): for ksize <= 7 OpenCV's fixed binomial taps, which differ
  # from a sampled Gaussian of sigma 0.3 * ((5 - 1) / 2 - 1) + 0.8 = 1.1 by up to 0.008.
  taps = np.array([1, 4, 6, 4, 1]) / 16
  expected = np.zeros((11, 11))
  expected[3:8, 3:8] = np.outer(taps, taps)
  for c in range(3):
    np.testing.assert_allclose(out[..., c], expected, atol=1e-7)


def test_blur_matches_opencv_with_its_reflect_101_border():
  cv2 = pytest.importorskip('cv2')
  image = np.random.RandomState(0).uniform(0, 255, (9, 13, 3)).astype(np.float32)
  np.testing.assert_allclose(aug.gaussian_blur(image), cv2.GaussianBlur(image, (5, 5), 0),
                             atol=1e-3)


def test_blur_and_photometric_change_the_image_and_leave_the_label():
  image, label = _blocks(h=40, w=56)  # smaller than the crop: 8 rows and columns of padding
  config = dict(CONFIG, scale_range=None, cat_max_ratio=1.0)
  plain_image, plain_label = aug.augment(image, label, tf.constant([3, 4]), config)
  for new in (dict(blur_prob=1.0), dict(photometric=True)):
    out_image, out_label = aug.augment(image, label, tf.constant([3, 4]), dict(config, **new))
    np.testing.assert_array_equal(out_label, plain_label)
    assert not np.allclose(out_image, plain_image), new
    # mmseg pads after PhotoMetricDistortion: padding stays the mean colour, 0 once normalised.
    padded = out_label.numpy() == 255
    np.testing.assert_allclose(out_image.numpy()[padded], 0.0, atol=1e-5)


def test_photometric_distortion_is_seeded_and_stays_in_0_255():
  rng = np.random.RandomState(0)
  image = rng.choice([0.0, 255.0, 100.0], (16, 16, 3)).astype(np.float32)
  image[:8] = rng.uniform(0, 255, (8, 16, 3))
  changed = 0
  for seed in range(16):
    out = aug.photometric_distortion(tf.constant(image), tf.constant([seed, 0])).numpy()
    assert out.min() >= 0.0 and out.max() <= 255.0
    again = aug.photometric_distortion(tf.constant(image), tf.constant([seed, 0])).numpy()
    np.testing.assert_array_equal(out, again)
    changed += not np.allclose(out, image)
  assert changed >= 12  # each of 4 steps applies with p 0.5: unchanged 1 time in 16


def test_photometric_hue_turns_by_opencv_steps_of_2_degrees_up_to_36():
  """mmseg's hue_delta 18 is in OpenCV's 8-bit hue units (180 a turn), drawn from [-18, 18).

  Brightness, contrast and saturation leave the hue of an unclipped colour unchanged, so
  every hue change is a whole number of 2-degree steps.
  """
  image = np.tile(np.float32([100, 70, 60]), (2, 2, 1))  # clipped by no step at any setting
  hue = colorsys.rgb_to_hsv(*image[0, 0] / 255)[0]
  turns = []
  for seed in range(48):
    out = aug.photometric_distortion(tf.constant(image), tf.constant([seed, 1])).numpy()
    turns.append((colorsys.rgb_to_hsv(*out[0, 0] / 255)[0] - hue + 0.5) % 1 - 0.5)
  steps = np.array(turns) * 180
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
  steps = np.round(steps)
  assert steps.min() >= -18 and steps.max() <= 17
  assert np.abs(steps).max() >= 15 and (steps == 0).mean() > 0.3  # applied about half the time


@pytest.mark.parametrize('height,width', [(512, 683), (1500, 2000), (300, 400), (2000, 700)])
@pytest.mark.parametrize('ratio', [0.5, 1.0, 1.7])
def test_rescale_into_a_box_is_mmsegs_random_resize(height, width, ratio):
  """mmseg's RandomResize(scale=(2048, 512), keep_ratio=True) at a drawn ratio: mmcv's size."""
  import mmcv  # pylint: disable=g-import-not-at-top
  image = tf.zeros((height, width, 3), tf.float32)
  label = tf.zeros((height, width, 1), tf.uint8)
  seed = tf.constant([0, 1])
  image, label = aug.random_rescale(image, label, seed, (ratio, ratio), scale=(2048, 512))
  box = (int(2048 * ratio), int(512 * ratio))
  want_w, want_h = mmcv.rescale_size((width, height), box)
  assert image.shape[:2] == label.shape[:2] == (want_h, want_w)


def test_a_stream_started_at_a_position_is_the_tail_of_the_stream(tiny_scenes):
  """The resumable state is one number: the stream from position p is the stream from 0
  without its first p examples per device, decoded and augmented alike."""
  config = dict(FULL, crop_size=(32, 48))
  whole = list(input_pipeline.create_split(tiny_scenes, 'train', config, 2, seed=3)
               .take(5).as_numpy_iterator())
  tail = list(input_pipeline.create_split(tiny_scenes, 'train', config, 2, seed=3, position=4)
              .take(3).as_numpy_iterator())
  for a, b in zip(whole[2:], tail):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(whole[0]['image'], whole[2]['image'])


def test_each_epoch_visits_the_shard_once_in_its_own_order():
  size, seed = 7, tf.constant([5, 1], tf.int64)
  order = [int(input_pipeline.shard_order(tf.constant(p, tf.int64), size, seed))
           for p in range(3 * size)]
  epochs = [order[e * size:(e + 1) * size] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(size))
  assert len({tuple(e) for e in epochs}) == 3  # reshuffled every epoch
  other = [int(input_pipeline.shard_order(tf.constant(p, tf.int64), size,
                                          tf.constant([5, 2], tf.int64))) for p in range(size)]
  assert other != epochs[0]  # each device its own order


def test_devices_read_disjoint_shards_covering_the_split():
  for n, devices in ((10, 4), (6, 4), (8, 8), (1000, 3)):
    bounds = [input_pipeline.shard_bounds(n, devices, d) for d in range(devices)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(end > first for first, end in bounds)


def test_a_saved_position_reads_back_and_another_device_count_is_warned_of(tmp_path):
  from unittest import mock

  import jax
  from psp_jax.data import resumable_iterator
  batches = resumable_iterator.ResumableIterator(
      tf.data.Dataset.range(100).batch(2), 2, str(tmp_path), position=6)
  next(batches), next(batches)
  batches.save(5)
  with mock.patch.object(resumable_iterator.logging, 'warning') as warning:
    assert resumable_iterator.saved_position(str(tmp_path), 5) == 10
    assert resumable_iterator.saved_position(str(tmp_path), 4) is None
    warning.assert_not_called()
    path = tmp_path / '5' / f'process_{jax.process_index()}.json'
    path.write_text(path.read_text().replace(f'"devices": {jax.device_count()}', '"devices": 99'))
    assert resumable_iterator.saved_position(str(tmp_path), 5) == 10
    assert warning.call_count == 1 and 99 in warning.call_args.args
