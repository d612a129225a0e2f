"""Segmentation metrics from a confusion matrix accumulated on device (mmseg's IoUMetric).

The pmapped `eval_step` returns the confusion matrix of its batch summed over all
devices (`lax.psum`), so the host only adds [C, C] integer matrices; mIoU, mAcc and
aAcc are computed once at the end, exactly as mmseg's `IoUMetric` does from its
per-class intersection/union/label areas.
"""

import functools
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from psp_jax import inference
from psp_jax.losses import IGNORE_LABEL
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


def eval_step(variables: Any, batch: dict[str, jnp.ndarray], apply_fn, *, num_classes: int,
              align_corners: bool = False, axis_name: str | None = 'batch') -> jnp.ndarray:
  """Confusion matrix of one batch ({'image': [b, H, W, 3], 'label': [b, H, W]}).

  Logits at 1/8 are upsampled bilinearly to the label size before the argmax, as
  mmseg's whole-image inference does. Summed over `axis_name` devices.
  """
  outputs = apply_fn(variables, batch['image'], train=False)
  logits = upsample_logits(outputs['logits'], batch['label'].shape[1:3], align_corners)
  matrix = confusion_matrix(jnp.argmax(logits, axis=-1), batch['label'], num_classes)
  return matrix if axis_name is None else jax.lax.psum(matrix, axis_name)


def pmapped_eval_step(apply_fn, **kwargs):
  return jax.pmap(functools.partial(eval_step, apply_fn=apply_fn, axis_name='batch', **kwargs),
                  axis_name='batch')


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
  metrics = {'aAcc': 100 * intersection.sum() / max(label_area.sum(), 1),
             'mIoU': 100 * np.nanmean(iou) if np.isfinite(iou).any() else float('nan'),
             'mAcc': 100 * np.nanmean(acc) if np.isfinite(acc).any() else float('nan')}
  names = class_names or [str(c) for c in range(len(iou))]
  for name, class_iou, class_acc in zip(names, iou, acc):
    metrics[f'IoU/{name}'] = 100 * class_iou
    metrics[f'Acc/{name}'] = 100 * class_acc
  return {k: float(v) for k, v in metrics.items()}


def accumulate_confusion(p_eval_step, variables: Any,
                         batches: Iterable[dict[str, Any]]) -> np.ndarray:
  """Sums the pmapped step's confusion matrices over `batches` (already on devices)."""
  total = None
  for batch in batches:
    matrix = p_eval_step(variables, batch)[0]  # identical on every device after psum
    total = matrix if total is None else total + matrix
  return np.asarray(jax.device_get(total))


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
    valid = (label >= 0) & (label < num_classes)
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
  decode = getattr(module, 'decode', lambda e: (e['image'], e['segmentation_mask']))
  test = config.test
  predictor = inference.Predictor(build_model(config.model), variables, mode=test.mode,
                                  crop_size=test.crop_size, stride=test.stride,
                                  window_batch=test.window_batch,
                                  size_divisor=test.size_divisor)
  examples = tfds.as_numpy(builder.as_dataset(split=split).map(decode))
  metrics = evaluate_images(
      predictor, examples, num_classes=config.model.num_classes, class_names=module.CLASS_NAMES,
      total=builder.info.splits[split].num_examples, scales=test.scales, flip=test.flip,
      resize=test.resize, test_scale=test.test_scale, base=test.base_size)
  return metrics, format_table(metrics, module.CLASS_NAMES)
