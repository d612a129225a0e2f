"""Whole/slide inference, multi-scale and flip: window geometry, symmetry, and mmseg parity."""

import dataclasses

import numpy as np
import pytest

import mmseg_reference as ref
from psp_jax import build_model, config as base_config
from psp_jax.base import spec
from psp_jax.convert import convert_state_dict
from psp_jax.evaluation import evaluator, inference, metrics
from psp_jax.evaluation.inference import TestProtocol

NUM_CLASSES = 19
TEST_SCALE = (160, 96)  # mmseg Resize(scale=(long, short), keep_ratio=True), scaled down
CROP, STRIDE = (64, 64), (43, 43)
# Varied sizes: portrait, landscape, one smaller than the crop in a dimension after resizing.
SIZES = [(61, 83), (100, 75), (90, 90), (40, 150)]


@pytest.mark.parametrize('height, width, crop, stride', [
    (97, 129, (64, 64), (43, 43)), (64, 64, (64, 64), (43, 43)), (50, 200, (64, 96), (32, 48)),
    (30, 40, (64, 64), (43, 43)), (512, 1024, (512, 512), (341, 341))])
def test_slide_windows_cover_every_pixel_as_the_stride_implies(height, width, crop, stride):
  windows = inference.slide_windows(height, width, crop, stride)
  count = np.zeros((height, width), int)
  for y1, y2, x1, x2 in windows:
    assert (y2 - y1, x2 - x1) == (min(crop[0], height), min(crop[1], width))
    count[y1:y2, x1:x2] += 1
  assert count.min() >= 1
  rows = sorted({w[0] for w in windows})
  cols = sorted({w[2] for w in windows})
  assert len(windows) == len(rows) * len(cols)
  # Windows start every `stride` pixels; the last one is moved back to end at the edge.
  assert rows == sorted({min(i * stride[0], max(height - crop[0], 0)) for i in range(len(rows))})
  assert cols == sorted({min(i * stride[1], max(width - crop[1], 0)) for i in range(len(cols))})
  assert max(w[1] for w in windows) == height and max(w[3] for w in windows) == width


def test_rescale_sizes_follow_mmcv_and_semseg():
  assert inference.rescale_size(512, 683, (2048, 512)) == (512, 683)
  assert inference.rescale_size(1024, 2048, (2048, 512)) == (512, 1024)
  assert inference.rescale_size(300, 1500, (2048, 512)) == (410, 2048)
  assert inference.base_size(375, 500, 512) == (384, 512)
  assert inference.base_size(500, 375, 512, 0.5) == (256, 192)


def test_csail_sizes_follow_mit_semseg_val_dataset():
  """Short side to each size, long side <= 1000, truncated, then up to a multiple of 8."""
  protocol = inference.TestProtocol(resize='csail', size_divisor=None)  # CSAIL's defaults
  assert protocol.input_sizes(512, 683) == [(304, 400), (376, 504), (456, 600), (528, 704),
                                            (600, 800)]
  # A panorama: 1000 / 1600 caps every size at the same one.
  assert protocol.input_sizes(480, 1600) == [(304, 1000)] * 5
  assert inference.csail_size(683, 512, 300, 1000, 8) == (400, 304)
  with pytest.raises(ValueError, match="resize='csail'"):
    inference.TestProtocol(resize='csail', size_divisor=32)
  with pytest.raises(ValueError, match="resize='csail'"):
    inference.TestProtocol(resize='csail', mode='slide', size_divisor=None)


@pytest.fixture(scope='module')
def converted():
  reference = ref.build_pspnet(depth=18, num_classes=NUM_CLASSES, seed=3)
  config = base_config.get_model_config()
  config.update(depth=18, channels=128, ppm_channels=128, aux_channels=64,
                num_classes=NUM_CLASSES)
  model = build_model(config)
  variables = convert_state_dict(ref.state_dict(reference), 'mmseg', model)
  return reference, model, variables


def _images(seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(0, 256, (*size, 3)).astype(np.uint8) for size in SIZES]


def test_flip_averaging_is_symmetric(converted):
  _, model, variables = converted
  predictor = inference.Predictor(model, variables)
  image = _images()[0]
  flipped = TestProtocol(flip=True, resize='none')
  scores = inference.predict(predictor, image, flipped)
  mirrored = inference.predict(predictor, image[:, ::-1], flipped)
  np.testing.assert_allclose(scores, mirrored[:, ::-1], atol=1e-5)
  np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)  # averaged probabilities


@pytest.mark.parametrize('protocol', [
    TestProtocol(test_scale=(48, 32)),
    TestProtocol(test_scale=(48, 32), scales=(0.75, 1.25), flip=True)], ids=['one', 'tta'])
def test_labels_by_blocks_of_rows_are_the_argmax_of_the_scores(converted, protocol):
  """predict.py's bounded-memory path: blocks of a few rows give the whole image's argmax."""
  _, model, variables = converted
  predictor = inference.Predictor(model, variables)
  image = np.random.RandomState(5).randint(0, 256, (97, 131, 3)).astype(np.uint8)
  expected = inference.predict(predictor, image, protocol).argmax(-1)
  labels = inference.predict_labels(predictor, image, protocol,
                                    max_scores=7 * 131 * NUM_CLASSES)  # 14 blocks, the last short
  assert labels.shape == (97, 131)
  np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize('protocol', [
    TestProtocol(resize='none'), TestProtocol(resize='none', scales=(0.75, 1.25), flip=True)],
    ids=['one', 'tta'])
def test_tiles_of_one_window_are_the_whole_pass_padded_to_the_output_stride(converted,
                                                                               protocol):
  """Past max_pixels a pass runs in tiles; one tile as large as the input is the whole
  pass padded to the output stride, so the grid, its upsampling (scale composed, flip
  undone) and the blocks of rows are the whole path's. No pass of more than max_pixels
  (76x104 at scale 1.25), none tiled."""
  _, model, variables = converted
  image = np.random.RandomState(6).randint(0, 256, (61, 83, 3)).astype(np.uint8)
  padded = inference.Predictor(model, variables, size_divisor=model.output_stride)
  expected = inference.predict_labels(padded, image, protocol)
  tiles = inference.Tiles(max_pixels=0, window=(112, 112), stride=(80, 80))
  labels = inference.predict_labels(inference.Predictor(model, variables), image, protocol,
                                    max_scores=9 * 83 * NUM_CLASSES, tiles=tiles)
  np.testing.assert_array_equal(labels, expected)
  assert inference.predict_labels(padded, image, protocol, tiles=dataclasses.replace(
      tiles, window=(16, 16), stride=(16, 16), max_pixels=76 * 104)).tolist() == expected.tolist()


def test_tiles_average_overlapping_windows_on_the_output_stride_grid(converted):
  """Windows of 32x40 at 16x24 over a 61x83 image padded to 64x88: starts 0, 16, 32 by
  0, 24, 48 (the last flush with the edge); each cell is the mean of its windows' logits."""
  _, model, variables = converted
  image = np.random.RandomState(7).randint(0, 256, (61, 83, 3)).astype(np.uint8)
  tiles = inference.Tiles.for_crop(0, (36, 45), (16, 24))
  assert (tiles.window, tiles.stride) == ((32, 40), (16, 24))
  grid = tiles.grid_logits(inference.Predictor(model, variables, window_batch=4), image)
  padded = np.zeros((64, 88, 3), np.float32)
  padded[:61, :83] = inference.normalize(image)
  total, count = np.zeros((8, 11, NUM_CLASSES)), np.zeros((8, 11, 1))
  for y in (0, 16, 32):
    for x in (0, 24, 48):
      window = padded[None, y:y + 32, x:x + 40]
      total[y // 8:y // 8 + 4, x // 8:x // 8 + 5] += model.apply(variables, window)['logits'][0]
      count[y // 8:y // 8 + 4, x // 8:x // 8 + 5] += 1
  assert count.min() == 1 and count.max() == 4
  np.testing.assert_allclose(grid, total / count, rtol=1e-5, atol=1e-5)


def _mmseg_predictions(reference, images, mode, size_divisor=None):
  """mmseg 1.2.2's own test path: mmcv.imrescale, SegDataPreProcessor (normalise, and pad
  to `size_divisor` as with its test_cfg), EncoderDecoder.predict."""
  import mmcv
  import torch
  from mmengine.config import ConfigDict
  from mmseg.models.data_preprocessor import SegDataPreProcessor
  from mmseg.structures import SegDataSample
  reference.test_cfg = ConfigDict(mode=mode, crop_size=CROP, stride=STRIDE)
  preprocessor = SegDataPreProcessor(
      mean=spec.MEAN_RGB, std=spec.STDDEV_RGB, pad_val=0, seg_pad_val=255,
      test_cfg=dict(size_divisor=size_divisor) if size_divisor else None)
  predictions = []
  for image in images:
    resized = mmcv.imrescale(image, TEST_SCALE, interpolation='bilinear', backend='cv2')
    sample = SegDataSample(metainfo=dict(img_shape=resized.shape[:2],
                                         ori_shape=image.shape[:2]))
    data = preprocessor(dict(inputs=[torch.from_numpy(resized.transpose(2, 0, 1).copy())],
                             data_samples=[sample]), training=False)
    with torch.no_grad():
      (result,) = reference.predict(data['inputs'], data['data_samples'])
    predictions.append(result.pred_sem_seg.data[0].numpy())
  return predictions


@pytest.mark.parametrize('mode, size_divisor', [('whole', None), ('slide', None), ('whole', 32)])
def test_evaluation_path_matches_mmseg_inference(converted, mode, size_divisor):
  reference, model, variables = converted
  images = _images()
  expected = _mmseg_predictions(reference, images, mode, size_divisor)
  predictor = inference.Predictor(model, variables, mode=mode, crop_size=CROP, stride=STRIDE,
                                  size_divisor=size_divisor)
  ours = [inference.predict(predictor, image, TestProtocol(test_scale=TEST_SCALE)).argmax(-1)
          for image in images]
  agreement = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(ours, expected)]))
  assert agreement >= 0.999, agreement
  # The same mIoU on labels made from mmseg's predictions with some pixels changed.
  rng = np.random.RandomState(1)
  labels = [np.where(rng.rand(*e.shape) < 0.3, rng.randint(0, NUM_CLASSES, e.shape), e)
            for e in expected]
  labels[0][:5] = 255
  def miou(predictions):
    matrix = sum(np.asarray(metrics.confusion_matrix(p[None], l[None], NUM_CLASSES))
                 for p, l in zip(predictions, labels))
    return metrics.segmentation_metrics(matrix)['mIoU']
  assert abs(miou(ours) - miou(expected)) <= 0.01
  assert len({s for s in predictor.compiled_shapes}) <= len(images)


def test_size_divisor_bounds_compilations_over_many_image_sizes(converted):
  _, model, variables = converted
  predictor = inference.Predictor(model, variables, size_divisor=32)
  rng = np.random.RandomState(7)
  sizes = {(int(h), int(w)) for h, w in rng.randint(33, 97, (12, 2))}
  for size in sizes:
    scores = inference.predict(predictor, rng.randint(0, 256, (*size, 3)).astype(np.uint8),
                               TestProtocol(resize='none'))
    assert scores.shape == (*size, NUM_CLASSES)
  # Heights and widths in 33..96 fall in the buckets 64 and 96: at most 4 programs.
  assert len(sizes) > 8 and predictor.compiled_shapes <= {
      (1, h, w, 3) for h in (64, 96) for w in (64, 96)}


def test_bucketed_pmap_evaluation_equals_per_image_predictions(converted):
  """4 simulated devices, images of many sizes: the same confusion matrix as predict()."""
  _, model, variables = converted
  rng = np.random.RandomState(11)
  examples = []
  for h, w in [(61, 83), (100, 75), (90, 90), (40, 150), (64, 64), (70, 95), (33, 47)]:
    examples.append((rng.randint(0, 256, (h, w, 3)).astype(np.uint8),
                     np.where(rng.rand(h, w) < 0.1, 255, rng.randint(0, NUM_CLASSES, (h, w)))))
  predictor = inference.Predictor(model, variables, size_divisor=32)
  expected = sum(np.asarray(metrics.confusion_matrix(
      inference.predict(predictor, image, TestProtocol(test_scale=TEST_SCALE)).argmax(-1)[None],
      label[None], NUM_CLASSES)) for image, label in examples)
  bucketed = evaluator.Evaluator(model, TestProtocol(size_divisor=32, test_scale=TEST_SCALE),
                                 NUM_CLASSES)
  matrix = bucketed.confusion(variables, examples)
  assert matrix.sum() == sum((label != 255).sum() for _, label in examples)
  # Identical up to argmax ties from float summation order on a handful of pixels.
  assert np.abs(matrix - expected).sum() <= 0.001 * matrix.sum(), np.abs(matrix - expected).sum()
  # Inputs in 32-pixel buckets, labels in 128-pixel ones: 7 sizes share 4 programs.
  assert bucketed.last_num_shapes <= 4, bucketed.last_num_shapes
