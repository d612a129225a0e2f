"""Segmentation cross-entropy with an ignore label, exact under data parallelism."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from psp_jax.base import errors, spec
from psp_jax.models import resample
from psp_jax.models.kernels.cross_entropy import pixel_weights


def upsampled_cross_entropy_sums(logits: jnp.ndarray, labels: jnp.ndarray,
                                 align_corners: bool = False,
                                 ignore_label: int = spec.IGNORE_LABEL,
                                 class_weight: tuple[float, ...] | None = None
                                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Summed cross-entropy of the logits bilinearly upsampled to the labels, and argmax hits.

  Args:
    logits: [B, h, w, K] at the model's output stride.
    labels: [B, H, W] int32 class ids, `ignore_label` where unlabelled.
    class_weight: K weights, each pixel's term scaled by its label's; None: all 1.
  Returns:
    (sum of -log p[label] (times class_weight[label]) over labelled pixels, number of
    labelled pixels whose argmax over the upsampled logits is the label), scalars in the
    logits' precision (at least float32); only the first has a gradient.
  """
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  upsampled = resample.resize_bilinear(logits, labels.shape[1:3], align_corners).astype(dtype)
  valid = labels != ignore_label
  log_probs = jax.nn.log_softmax(upsampled, axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  if class_weight is not None:
    picked = picked * pixel_weights(labels, class_weight, ignore_label, dtype)
  loss = -jnp.sum(jnp.where(valid, picked, 0.0))
  hits = jnp.sum(valid & (jnp.argmax(upsampled, axis=-1) == labels)).astype(dtype)
  return loss, jax.lax.stop_gradient(hits)


def downsample_labels(labels: jnp.ndarray, rate: int,
                      ignore_label: int = spec.IGNORE_LABEL) -> jnp.ndarray:
  """CSAIL's `segm_downsampling_rate`: label maps nearest-downsampled by `rate`.

  mit_semseg's TrainDataset pads each label map bottom/right to a multiple of `rate`
  with its unlabelled value (0 there, `ignore_label` here) and resizes it by PIL's
  nearest neighbour, which keeps source pixel floor((i + 0.5) * rate) = rate * i + rate // 2.

  Args:
    labels: [B, H, W] int32.
  Returns:
    [B, ceil(H / rate), ceil(W / rate)] int32: the 1/rate logits' grid for a network of
    output stride `rate` (PyTorch's symmetric padding rounds sizes up).
  """
  height, width = labels.shape[1:3]
  pad = ((0, 0), (0, -height % rate), (0, -width % rate))
  padded = jnp.pad(labels, pad, constant_values=ignore_label)
  return padded[:, rate // 2::rate, rate // 2::rate]


def check_labels(labels: Any, num_classes: int, ignore_label: int = spec.IGNORE_LABEL) -> None:
  """Raises unless `labels` is [B, H, W] integer class ids in [0, num_classes) or `ignore_label`.

  `segmentation_loss` runs this itself on concrete labels; inside `jax.jit` the values are
  not known, so call it on the host batch before the jitted step (a label >= num_classes
  would otherwise give a NaN loss, and a negative one a finite wrong one).
  """
  if labels.ndim != 3:
    raise errors.InputError(
        f'labels must be [B, H, W] class ids, got shape {tuple(labels.shape)}'
        f'{" (drop the last axis: labels[..., 0])" if labels.ndim == 4 and labels.shape[-1] == 1 else ""}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise errors.InputError(f'labels are {labels.dtype}: give integer class ids (int32).')
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.unique(np.asarray(labels))
  bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
  if bad.size:
    raise errors.InputError(
        f'labels hold {bad[:5].tolist()}: class ids must be in [0, {num_classes}) or '
        f'{ignore_label} (ignored); remap them (e.g. a reduce_zero_label or a void class -> '
        f'{ignore_label}).')


def check_class_weight(class_weight, num_classes: int) -> tuple[float, ...]:
  """`class_weight` as a tuple of K floats, or an error saying what is wrong with it."""
  values = tuple(float(w) for w in np.asarray(class_weight, np.float64).reshape(-1))
  if len(values) != num_classes or not all(np.isfinite(w) and w >= 0 for w in values) \
      or not any(values):
    raise errors.InputError(
        f'class_weight has {len(values)} values {list(values)[:5]}...: give one finite weight '
        f'>= 0 per class ({num_classes}), not all 0.')
  return values


def segmentation_loss(outputs: dict[str, jnp.ndarray], labels: jnp.ndarray, *,
                      aux_weight: float = 0.4, average: str = 'valid',
                      align_corners: bool = False, ignore_label: int = spec.IGNORE_LABEL,
                      segm_downsampling_rate: int = 1, axis_name: str | None = None,
                      cross_entropy_sums: Callable | None = None,
                      class_weight: tuple[float, ...] | None = None
                      ) -> tuple[jnp.ndarray, dict[str, Any]]:
  """CE(main) + aux_weight * CE(aux), at the labels' or at the logits' resolution.

  With `segm_downsampling_rate` 1 (mmseg, semseg) the logits are upsampled bilinearly to
  the label size; with r > 1 (CSAIL: 8) the labels are downsampled to the logits
  (`downsample_labels`), which must then be [B, ceil(H / r), ceil(W / r)], and the
  plain loss runs at that size (no full-resolution logits to avoid, so no kernel).
  `average='valid'` divides by the number of labelled pixels (semseg, CSAIL, and mmseg's
  `avg_non_ignore=True`); `'all'` by all pixels (mmseg's default). With
  `axis_name`, the denominator is the count over the whole pmapped batch, scaled by
  the number of devices, so that `lax.pmean` of the per-device gradients equals the
  gradient of the global-batch loss exactly, however labelled pixels are spread.
  `cross_entropy_sums` replaces `upsampled_cross_entropy_sums` (psp_jax.models.kernels' CPU one).

  `class_weight` (K values, mmseg's `CrossEntropyLoss(class_weight=...)`) makes both a
  weighted average, in both heads: each labelled pixel counts class_weight[label] times,
  in the sum and in the denominator, so 'valid' is PyTorch's
  `F.cross_entropy(weight=..., ignore_index=...)` mean and mmseg 1.2.2's. 'all' adds one
  per ignored pixel to the denominator, as every pixel counts without weights (mmseg
  1.2.2 raises an IndexError on any ignored pixel there; without one, both modes are its).

  Args:
    outputs: model outputs, 'logits' and optionally 'aux_logits', [B, h, w, K].
    labels: [B, H, W] int32, checked (`check_labels`) where the values are concrete.
  Returns:
    (loss to differentiate, {'loss', 'main_loss', 'aux_loss', 'pixel_accuracy'} over
    the global batch; pixel accuracy of the main head on labelled pixels, at the
    resolution the loss is computed at).
  """
  if average not in ('valid', 'all'):
    raise errors.InputError(f"loss average must be 'valid' or 'all', got {average!r}.")
  check_labels(labels, outputs['logits'].shape[-1], ignore_label)
  if labels.shape[0] != outputs['logits'].shape[0]:
    raise errors.InputError(f'labels are {tuple(labels.shape)} for logits of '
                            f'{tuple(outputs["logits"].shape)}: one label map per image.')
  if segm_downsampling_rate != 1:
    labels = downsample_labels(labels, segm_downsampling_rate, ignore_label)
    for key in ('logits', 'aux_logits'):
      if key in outputs and outputs[key].shape[1:3] != labels.shape[1:3]:
        raise errors.InputError(
            f'config.segm_downsampling_rate={segm_downsampling_rate} gives labels of '
            f'{labels.shape[1:3]}, but the {key} are {outputs[key].shape[1:3]}: set it to '
            'the model\'s output stride (CSAIL: 8), or to 1 to upsample the logits.')
    cross_entropy_sums = upsampled_cross_entropy_sums  # the resize is the identity
  dtype = jnp.promote_types(outputs['logits'].dtype, jnp.float32)
  labelled = labels != ignore_label
  num_labelled = jnp.sum(labelled).astype(dtype)
  denominator = num_labelled if average == 'valid' else jnp.asarray(labels.size, dtype)
  if class_weight is not None:
    class_weight = check_class_weight(class_weight, outputs['logits'].shape[-1])
    weighted = jnp.sum(pixel_weights(labels, class_weight, ignore_label, dtype))
    denominator = weighted + (denominator - num_labelled)  # 'all': ignored pixels count 1
  if axis_name is not None:
    denominator = jax.lax.psum(denominator, axis_name) / jax.lax.psum(1, axis_name)
  denominator = jnp.maximum(denominator, 1.0)
  terms = {}
  for key, name, weight in (('logits', 'main_loss', 1.0), ('aux_logits', 'aux_loss', aux_weight)):
    if key not in outputs or weight == 0:
      continue
    total, hits = (cross_entropy_sums or upsampled_cross_entropy_sums)(
        outputs[key], labels, align_corners, ignore_label, class_weight)
    if key == 'logits':
      accuracy_counts = jnp.stack([hits, num_labelled])
    terms[name] = (weight, total / denominator)
  loss = sum(weight * value for weight, value in terms.values())
  metrics = {name: value for name, (_, value) in terms.items()}
  metrics['loss'] = loss
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
    accuracy_counts = jax.lax.psum(accuracy_counts, axis_name)
  metrics['pixel_accuracy'] = accuracy_counts[0] / jnp.maximum(accuracy_counts[1], 1.0)
  return loss, metrics
