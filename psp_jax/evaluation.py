"""Evaluation over a dataset: confusion matrices, and mmseg's IoUMetric computed from them.

`BucketedEvaluator` spreads whole-image evaluation over the local devices with the
confusion matrix summed on device; `evaluate_images` runs sliding windows or test-time
augmentation image by image. mIoU, mAcc and aAcc are computed once at the end, exactly
as mmseg's `IoUMetric` does from its per-class intersection/union/label areas.
"""

import functools
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import jax_utils
from jax.experimental import multihost_utils

from psp_jax import inference
from psp_jax.losses import IGNORE_LABEL
from psp_jax.models import resample
from psp_jax.models.pspnet import upsample_logits


def confusion_matrix(predictions: jnp.ndarray, labels: jnp.ndarray, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jnp.ndarray:
  """[C, C] int32 counts, rows = true class, columns = predicted class.

  Args:
    predictions, labels: [B, H, W] int class maps; pixels labelled `ignore_label`
      (or any value outside [0, C), e.g. padding) are not counted.
  """
  valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
  index = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
  counts = jnp.zeros(num_classes * num_classes + 1, jnp.int32).at[index.reshape(-1)].add(1)
  return counts[:-1].reshape(num_classes, num_classes)


def segmentation_metrics(matrix: np.ndarray,
                         class_names: Sequence[str] | None = None) -> dict[str, float]:
  """mIoU, mAcc, aAcc and per-class IoU/Acc (in %) from a [C, C] confusion matrix.

  As mmseg: a class with no labelled pixels has NaN accuracy and, if also never
  predicted, NaN IoU; means skip NaNs. A class predicted but absent scores IoU 0.
  """
  matrix = np.asarray(matrix, np.float64)
  intersection = np.diag(matrix)
  label_area, pred_area = matrix.sum(axis=1), matrix.sum(axis=0)
  union = label_area + pred_area - intersection
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(union > 0, intersection / union, np.nan)
    acc = np.where(label_area > 0, intersection / label_area, np.nan)
  with np.errstate(divide='ignore', invalid='ignore'):  # no labelled pixel: NaN, as mmseg
    all_accuracy = 100 * intersection.sum() / label_area.sum()
  metrics = {'aAcc': all_accuracy,
             'mIoU': 100 * np.nanmean(iou) if np.isfinite(iou).any() else float('nan'),
             'mAcc': 100 * np.nanmean(acc) if np.isfinite(acc).any() else float('nan')}
  names = class_names or [str(c) for c in range(len(iou))]
  for name, class_iou, class_acc in zip(names, iou, acc):
    metrics[f'IoU/{name}'] = 100 * class_iou
    metrics[f'Acc/{name}'] = 100 * class_acc
  return {k: float(v) for k, v in metrics.items()}


def check_labels(label: np.ndarray, num_classes: int, source: str = 'a label map') -> None:
  """Raises ValueError if `label` holds values that are neither class ids nor IGNORE_LABEL.

  mmseg's IoUMetric would drop such a pixel's label but still count its prediction (in the
  union); psp_jax's datasets reject them when decoding, and so do the metrics' entry points.
  """
  values = np.unique(label)
  bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_LABEL)]
  if bad.size:
    raise ValueError(f'{source}: label values {bad[:20].tolist()} are neither class ids in '
                     f'[0, {num_classes}) nor the ignore label {IGNORE_LABEL}.')


def evaluate_images(predictor, examples: Iterable[tuple[np.ndarray, np.ndarray]], *,
                    num_classes: int, class_names: Sequence[str] | None = None,
                    total: int | None = None, log_every: int = 100,
                    **predict_kwargs) -> dict[str, float]:
  """mIoU etc. of `predictor` (psp_jax.inference.Predictor) over (image, label) pairs.

  Each image is predicted at its original size with `inference.predict(**predict_kwargs)`
  (test resize, whole/slide, scales, flip) and compared with its full-resolution label,
  as mmseg's test loop does. Logs progress, ETA and the network shapes compiled so far.
  """
  matrix = np.zeros((num_classes, num_classes), np.int64)
  start = time.time()
  for index, (image, label) in enumerate(examples, 1):
    scores = inference.predict(predictor, image, **predict_kwargs)
    label = np.asarray(label).reshape(scores.shape[:2]).astype(np.int64)
    check_labels(label, num_classes, f'image {index}')
    valid = label != IGNORE_LABEL
    matrix += np.bincount(label[valid] * num_classes + scores.argmax(-1)[valid],
                          minlength=num_classes ** 2).reshape(num_classes, num_classes)
    if index % log_every == 0 or index == total:
      rate = index / (time.time() - start)
      eta = f', ETA {((total or index) - index) / rate:.0f}s' if total else ''
      logging.info('evaluated %d%s images (%.2f/s%s); %d network shapes compiled', index,
                   f'/{total}' if total else '', rate, eta, len(predictor.compiled_shapes))
  return segmentation_metrics(matrix, class_names)


def format_table(metrics: dict[str, float], class_names: Sequence[str]) -> str:
  """The per-class IoU/Acc table and the mIoU/mAcc/aAcc summary, as mmseg prints them."""
  width = max(len(n) for n in class_names)
  lines = [f'{"class":<{width}}  {"IoU":>6}  {"Acc":>6}']
  lines += [f'{n:<{width}}  {metrics[f"IoU/{n}"]:6.2f}  {metrics[f"Acc/{n}"]:6.2f}'
            for n in class_names]
  lines.append(f'aAcc {metrics["aAcc"]:.2f}  mIoU {metrics["mIoU"]:.2f}  '
               f'mAcc {metrics["mAcc"]:.2f}')
  return '\n'.join(lines)


def evaluate_config(config, variables: Any, split: str) -> tuple[dict[str, float], str]:
  """Runs config.test over a TFDS split of config.dataset; returns (metrics, table)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from psp_jax import datasets  # pylint: disable=g-import-not-at-top
  from psp_jax.models.pspnet import build_model  # pylint: disable=g-import-not-at-top
  module = datasets.dataset_module(config.dataset.name)
  builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir)
  decode = datasets.decoder(module)
  test, model = config.test, build_model(config.model)
  total = builder.info.splits[split].num_examples

  def read(part):
    """(image, label) pairs of `part` (all of `split`, or this process's share of it)."""
    return datasets.name_corrupt_images(
        tfds.as_numpy(builder.as_dataset(split=part).map(decode)), builder, split)

  if test.mode == 'whole' and tuple(test.scales) == (1.0,) and not test.flip and (
      test.size_divisor):
    # Sharded over processes, spread over local devices, confusion summed on device.
    examples = read(tfds.split_for_jax_process(split, drop_remainder=False))
    evaluator = BucketedEvaluator(model, variables, config.model.num_classes,
                                  test.size_divisor, test.resize, test.test_scale,
                                  test.base_size)
    start = time.time()
    for index, (image, label) in enumerate(examples, 1):
      evaluator.add(image, label)
      if index % 100 == 0:
        share, rate = -(-total // jax.process_count()), index / (time.time() - start)
        logging.info('evaluated %d/%d images (%.2f/s, ETA %.0fs); %d shape buckets compiled',
                     index, share, rate, max(share - index, 0) / rate, len(evaluator.buckets))
    metrics = segmentation_metrics(evaluator.result(), module.CLASS_NAMES)
    logging.info('%d shape buckets compiled in all', len(evaluator.buckets))
  else:  # sliding windows or test-time augmentation: one image at a time
    predictor = inference.predictor_for_test(model, variables, test)
    examples = read(split)
    metrics = evaluate_images(
        predictor, examples, num_classes=config.model.num_classes,
        class_names=module.CLASS_NAMES, total=total, scales=test.scales, flip=test.flip,
        resize=test.resize, test_scale=test.test_scale, base=test.base_size)
  return metrics, format_table(metrics, module.CLASS_NAMES)


@functools.lru_cache(maxsize=None)
def _bucket_confusion_step(model, num_classes: int):
  """The pmapped step of BucketedEvaluator, built once per model (so once per training run)."""
  def confusion(variables, image, label, rows, cols):
    outputs = model.apply(variables, image[None], train=False)
    logits = upsample_logits(outputs['logits'], image.shape[:2], model.align_corners)[0]
    scores = jnp.einsum('Hh,hwc,Ww->HWc', rows, logits, cols)
    matrix = confusion_matrix(jnp.argmax(scores, -1)[None], label[None], num_classes)
    return jax.lax.psum(matrix, 'devices')
  return jax.pmap(confusion, axis_name='devices', devices=jax.local_devices())


class BucketedEvaluator:
  """Whole-image, single-scale evaluation spread over the local devices with pmap.

  Each image is resized to its test size and padded (mean colour) to a multiple of
  `size_divisor`; its label is padded with 255 to a multiple too. Cropping the logits
  back and resizing them bilinearly to the label's original size is one matrix product
  per axis whose weights are inputs, not constants, so every image sharing a bucket
  (padded input size, padded label size) runs the same compiled program, one image per
  device, and the confusion matrix is `psum`med on device. The same numbers as
  `inference.predict` with `Predictor(size_divisor=...)`, which mmseg's test_cfg
  size_divisor padding defines.
  """

  def __init__(self, model, variables: Any, num_classes: int, size_divisor: int,
               resize: str, test_scale=None, base: int | None = None,
               label_divisor: int | None = None):
    self.devices = jax.local_devices()
    self.model, self.num_classes, self.divisor = model, num_classes, size_divisor
    # Labels keep their original sizes, which vary more: coarser buckets keep the number of
    # (input, label) bucket pairs, i.e. of compiled programs, small.
    self.label_divisor = label_divisor or 4 * size_divisor
    self.resize, self.test_scale, self.base = resize, test_scale, base
    self.variables = jax_utils.replicate(variables, self.devices)
    self.pending: dict[tuple[int, ...], list] = {}
    self.matrix = None
    self.buckets: set[tuple[int, ...]] = set()
    self._step = _bucket_confusion_step(model, num_classes)

  def add(self, image: np.ndarray, label: np.ndarray) -> None:
    """Queues one (uint8 [H, W, 3], [H, W] or [H, W, 1]) pair; runs a full bucket."""
    height, width = image.shape[:2]
    size = inference.test_size(height, width, self.resize, 1.0, self.test_scale, self.base)
    x = inference.normalize(inference.resize_image(image, size))
    padded = (inference.round_up(size[0], self.divisor), inference.round_up(size[1], self.divisor))
    out = (inference.round_up(height, self.label_divisor), inference.round_up(width, self.label_divisor))
    x = np.pad(x, ((0, padded[0] - size[0]), (0, padded[1] - size[1]), (0, 0)))
    label = np.asarray(label).reshape(height, width).astype(np.int32)
    check_labels(label, self.num_classes)
    label = np.pad(label, ((0, out[0] - height), (0, out[1] - width)),
                   constant_values=IGNORE_LABEL)
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
      items.append((x, np.full_like(label, IGNORE_LABEL), rows, cols))
    self.buckets.add(key)
    matrix = self._step(self.variables, *(np.stack(a) for a in zip(*items)))[0]
    self.matrix = matrix if self.matrix is None else self.matrix + matrix

  def result(self) -> np.ndarray:
    """The [C, C] confusion matrix over every image added, summed over all processes."""
    for key in list(self.pending):
      self._run(key)
    matrix = np.zeros((self.num_classes,) * 2, np.int64) if self.matrix is None else (
        np.asarray(jax.device_get(self.matrix), np.int64))
    if jax.process_count() > 1:
      matrix = np.asarray(multihost_utils.process_allgather(matrix)).sum(0)
    return matrix
