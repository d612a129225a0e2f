"""Evaluating a model on a dataset split with config.test's protocol: one path for all modes.

Every mode is split over processes: each evaluates its own share of the examples and the
confusion matrices are summed over hosts. Within a process, a single-pass protocol (whole
image, one scale, no flip, a size divisor) is spread over the local devices with pmap,
each image padded into a shape bucket and the confusion matrix summed on device; sliding
windows and test-time augmentation run image by image (`inference.predict`), each local
device taking every n-th image. Both give mmseg's numbers.
"""

import concurrent.futures
import functools
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import jax_utils
from jax.experimental import multihost_utils

from psp_jax.base import spec
from psp_jax.evaluation import inference, metrics
from psp_jax.models import resample


class Evaluator:
  """Confusion matrices and metrics of `model` under `test`, for any variables.

  Built once per run: the compiled programs are shared by every evaluation of it.
  """

  def __init__(self, model, test: inference.TestProtocol, num_classes: int,
               class_names: Sequence[str] | None = None):
    self.model, self.test = model, test
    self.num_classes, self.class_names = num_classes, class_names

  def confusion(self, variables: Any, examples: Iterable[tuple[np.ndarray, np.ndarray]],
                total: int | None = None, log_every: int = 100) -> np.ndarray:
    """[C, C] int64 over (uint8 [H, W, 3] image, [H, W] or [H, W, 1] label) pairs, summed
    over processes: with several, each passes its own share of the examples."""
    if self.test.single_pass:
      counter = _Buckets(self.model, variables, self.num_classes, self.test)
    else:
      counter = _ImageByImage(self.model, variables, self.num_classes, self.test)
    start = time.time()
    for index, (image, label) in enumerate(examples, 1):
      counter.add(image, label, f'image {index}')
      if index % log_every == 0 or index == total:
        rate = index / (time.time() - start)
        eta = f', ETA {max((total or index) - index, 0) / rate:.0f}s' if total else ''
        logging.info('evaluated %d%s images (%.2f/s%s); %d network shapes compiled', index,
                     f'/{total}' if total else '', rate, eta, counter.num_shapes())
    matrix = counter.result()
    self.last_confusion = matrix
    self.last_num_shapes = counter.num_shapes()   # compiled programs of the last call
    logging.info('%d network shapes compiled in all', self.last_num_shapes)
    return matrix

  def evaluate(self, variables: Any, examples: Iterable, total: int | None = None
               ) -> dict[str, float]:
    """mIoU, mAcc, aAcc and per-class IoU/Acc (%) as mmseg's IoUMetric."""
    return metrics.segmentation_metrics(self.confusion(variables, examples, total),
                                        self.class_names)


def evaluate_split(evaluator: Evaluator, data, split: str, variables: Any
                   ) -> tuple[dict[str, float], str]:
  """Runs `evaluator` over `split` of `data` (a psp_jax.data.dataset.Dataset); returns
  (metrics, table).

  Each process reads and evaluates its own share of the split (Dataset.process_share);
  the metrics are those of the whole split, on every process.
  """
  examples, total = data.process_share(split)
  result = evaluator.evaluate(variables, examples, total)
  return result, metrics.format_table(result, evaluator.class_names)


class _ImageByImage:
  """Sliding windows or test-time augmentation, image by image (inference.predict).

  Each of the n local devices takes every n-th image, with a Predictor whose variables live
  on it, and a pool of n threads keeps them busy: images of their own sizes (no padding, as
  mmseg runs them) cannot share one pmapped program, so the devices run the same per-image
  programs side by side.
  Counts are integers, so the matrix does not depend on which device took which image.
  """

  def __init__(self, model, variables, num_classes, test):
    self.devices = jax.local_devices()
    self.predictors = [inference.predictor_for_test(model, jax.device_put(variables, device),
                                                    test) for device in self.devices]
    self.num_classes, self.test = num_classes, test
    self.matrix = np.zeros((num_classes, num_classes), np.int64)
    self.pool = concurrent.futures.ThreadPoolExecutor(len(self.devices))
    self.pending: list[concurrent.futures.Future] = []
    self.added = 0

  def _confusion(self, device_index, image, label, source) -> np.ndarray:
    with jax.default_device(self.devices[device_index]):  # resizes and softmax there too
      scores = inference.predict(self.predictors[device_index], image, self.test)
    label = np.asarray(label).reshape(scores.shape[:2]).astype(np.int64)
    metrics.check_labels(label, self.num_classes, source)
    valid = label != spec.IGNORE_LABEL
    return np.bincount(label[valid] * self.num_classes + scores.argmax(-1)[valid],
                       minlength=self.num_classes ** 2).reshape(self.matrix.shape)

  def add(self, image, label, source):
    self.pending.append(self.pool.submit(self._confusion, self.added % len(self.devices),
                                         image, label, source))
    self.added += 1
    while len(self.pending) > 2 * len(self.devices):  # bounds the images held in memory
      self.matrix += self.pending.pop(0).result()

  def num_shapes(self):
    return len(set().union(*(p.compiled_shapes for p in self.predictors)))

  def result(self):
    """The [C, C] confusion matrix over every image added, summed over all processes."""
    while self.pending:
      self.matrix += self.pending.pop(0).result()
    self.pool.shutdown()
    return _sum_over_processes(self.matrix)


def _sum_over_processes(matrix: np.ndarray) -> np.ndarray:
  """[C, C] int64 summed over all processes (each evaluated its own share of a split)."""
  if jax.process_count() > 1:
    matrix = np.asarray(multihost_utils.process_allgather(matrix)).sum(0)
  return matrix


@functools.lru_cache(maxsize=None)
def bucket_confusion_step(model, num_classes: int, devices: tuple | None = None):
  """The pmapped step of _Buckets over `devices` (the local ones if None), built once per
  model (so once per training run): (variables, image [n, h, w, 3], label [n, H, W],
  rows [n, H, h], cols [n, W, w]) -> the [C, C] confusion matrix, on every device."""
  def confusion(variables, image, label, rows, cols):
    logits = model.apply(variables, image[None], method='segment')[0]
    scores = jnp.einsum('Hh,hwc,Ww->HWc', rows, logits, cols)
    matrix = metrics.confusion_matrix(jnp.argmax(scores, -1)[None], label[None], num_classes)
    return jax.lax.psum(matrix, 'devices')
  return jax.pmap(confusion, axis_name='devices', devices=devices or jax.local_devices())


class _Buckets:
  """Whole-image, single-scale evaluation spread over the local devices with pmap.

  Each image is resized to its test size and padded (mean colour) to a multiple of
  `size_divisor`; its label is padded with 255 to a multiple too. Cropping the logits
  back and resizing them bilinearly to the label's original size is one matrix product
  per axis whose weights are inputs, not constants, so every image sharing a bucket
  (padded input size, padded label size) runs the same compiled program, one image per
  device, and the confusion matrix is `psum`med on device. The same numbers as
  `inference.predict` with `Predictor(size_divisor=...)`, as mmseg's test_cfg size_divisor.
  """

  def __init__(self, model, variables, num_classes: int, test: inference.TestProtocol):
    self.devices = jax.local_devices()
    self.model, self.num_classes, self.test = model, num_classes, test
    # Labels keep their original sizes, which vary more: coarser buckets keep the number of
    # (input, label) bucket pairs, i.e. of compiled programs, small.
    self.label_divisor = 4 * test.size_divisor
    self.variables = jax_utils.replicate(variables, self.devices)
    self.pending: dict[tuple[int, ...], list] = {}
    self.matrix = None
    self.buckets: set[tuple[int, ...]] = set()
    self._step = bucket_confusion_step(model, num_classes)

  def add(self, image: np.ndarray, label: np.ndarray, source: str) -> None:
    height, width = image.shape[:2]
    test, divisor = self.test, self.test.size_divisor
    size = inference.test_size(height, width, test.resize, 1.0, test.test_scale, test.base_size)
    x = inference.normalize(inference.resize_image(image, size))
    padded = (inference.round_up(size[0], divisor), inference.round_up(size[1], divisor))
    out = (inference.round_up(height, self.label_divisor),
           inference.round_up(width, self.label_divisor))
    x = np.pad(x, ((0, padded[0] - size[0]), (0, padded[1] - size[1]), (0, 0)))
    label = np.asarray(label).reshape(height, width).astype(np.int32)
    metrics.check_labels(label, self.num_classes, source)
    label = np.pad(label, ((0, out[0] - height), (0, out[1] - width)),
                   constant_values=spec.IGNORE_LABEL)
    align = self.model.align_corners
    rows = np.zeros((out[0], padded[0]), np.float32)
    rows[:height, :size[0]] = resample.bilinear_matrix(size[0], height, align)
    cols = np.zeros((out[1], padded[1]), np.float32)
    cols[:width, :size[1]] = resample.bilinear_matrix(size[1], width, align)
    key = (*padded, *out)
    self.pending.setdefault(key, []).append((x, label, rows, cols))
    if len(self.pending[key]) == len(self.devices):
      self._run(key)

  def _run(self, key) -> None:
    items = self.pending.pop(key)
    while len(items) < len(self.devices):  # an all-ignore filler counts nothing
      x, label, rows, cols = items[0]
      items.append((x, np.full_like(label, spec.IGNORE_LABEL), rows, cols))
    self.buckets.add(key)
    matrix = self._step(self.variables, *(np.stack(a) for a in zip(*items)))[0]
    self.matrix = matrix if self.matrix is None else self.matrix + matrix

  def num_shapes(self) -> int:
    return len(self.buckets)

  def result(self) -> np.ndarray:
    """The [C, C] confusion matrix over every image added, summed over all processes."""
    for key in list(self.pending):
      self._run(key)
    matrix = np.zeros((self.num_classes,) * 2, np.int64) if self.matrix is None else (
        np.asarray(jax.device_get(self.matrix), np.int64))
    return _sum_over_processes(matrix)
