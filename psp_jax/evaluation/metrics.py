"""Segmentation metrics as mmseg's IoUMetric computes them, from confusion matrices."""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from psp_jax.base import errors, spec


def confusion_matrix(predictions: jnp.ndarray, labels: jnp.ndarray, num_classes: int,
                     ignore_label: int = spec.IGNORE_LABEL) -> jnp.ndarray:
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
  """Raises ValueError if `label` holds values that are neither class ids nor spec.IGNORE_LABEL.

  mmseg's IoUMetric would drop such a pixel's label but still count its prediction (in the
  union); psp_jax's datasets reject them when decoding, and so do the metrics' entry points.
  """
  values = np.unique(label)
  bad = values[((values < 0) | (values >= num_classes)) & (values != spec.IGNORE_LABEL)]
  if bad.size:
    raise errors.InputError(f'{source}: label values {bad[:20].tolist()} are neither class ids in '
                            f'[0, {num_classes}) nor the ignore label {spec.IGNORE_LABEL}.')


def format_table(metrics: dict[str, float], class_names: Sequence[str]) -> str:
  """The per-class IoU/Acc table and the mIoU/mAcc/aAcc summary, as mmseg prints them."""
  width = max(len(n) for n in class_names)
  lines = [f'{"class":<{width}}  {"IoU":>6}  {"Acc":>6}']
  lines += [f'{n:<{width}}  {metrics[f"IoU/{n}"]:6.2f}  {metrics[f"Acc/{n}"]:6.2f}'
            for n in class_names]
  lines.append(f'aAcc {metrics["aAcc"]:.2f}  mIoU {metrics["mIoU"]:.2f}  '
               f'mAcc {metrics["mAcc"]:.2f}')
  return '\n'.join(lines)
