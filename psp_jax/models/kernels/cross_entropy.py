"""`losses.upsampled_cross_entropy_sums` without the full-resolution logits, for XLA:CPU.

The plain loss holds [B, H, W, K] several times over (logits, log-probabilities, their
gradient: 1.3 GB at 8x512x512x150); this one works on blocks of rows, in cache.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from psp_jax.base import spec
from psp_jax.models import resample


# Logit values per block of output rows in the forward pass: ~1M (4 MB) stays in cache.
_BLOCK_VALUES = 1 << 20


def upsampled_cross_entropy_sums(logits: jnp.ndarray, labels: jnp.ndarray,
                                 align_corners: bool = False,
                                 ignore_label: int = spec.IGNORE_LABEL,
                                 class_weight: tuple[float, ...] | None = None
                                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Summed cross-entropy of the logits bilinearly upsampled to the labels, and argmax hits.

  -log_softmax(resample.resize_bilinear(logits, labels.shape[1:3], align_corners)) at the
  labels, summed over labelled pixels (the same values up to summation order), without
  ever holding the full-resolution logits: the forward pass runs over blocks of output
  rows, and the backward pass over the rows of the logits, recomputing the upsampled
  rows each one reads from the logits upsampled along W only ([B, h, W, K]) and the
  per-pixel log-sum-exp saved by the forward pass.

  Args:
    logits: [B, h, w, K] at the model's output stride.
    labels: [B, H, W] int32 class ids, `ignore_label` where unlabelled.
    class_weight: K weights, each pixel's term scaled by its label's; None: all 1.
  Returns:
    (sum of -log p[label] (times class_weight[label]) over valid pixels, number of
    valid pixels whose argmax over the upsampled logits is the label), scalars of at
    least float32; only the first has a gradient.
  """
  weights = None if class_weight is None else tuple(float(w) for w in class_weight)
  return _upsampled_ce(logits, labels, bool(align_corners), int(ignore_label), weights)


def _accumulation_dtype(logits: jnp.ndarray):
  """float32 for float32 and narrower logits, float64 for float64 ones."""
  return jnp.promote_types(logits.dtype, jnp.float32)


def _widen(logits: jnp.ndarray, width: int, align_corners: bool) -> jnp.ndarray:
  """[h, B, W, K]: upsampled along W only, rows first so that each row is one slice."""
  return resample.interpolate_axis(logits, 2, width, align_corners).transpose(1, 0, 2, 3)


def _rows(widened, lower, upper, frac):
  """[r, B, W, K] (at least float32): output rows blended from rows `lower`/`upper`, as interpolate_axis."""
  frac = frac.reshape(-1, 1, 1, 1).astype(widened.dtype)
  return (jnp.take(widened, lower, axis=0) * (1 - frac)
          + jnp.take(widened, upper, axis=0) * frac).astype(_accumulation_dtype(widened))


def pixel_weights(labels: jnp.ndarray, class_weight: tuple[float, ...], ignore_label: int,
                  dtype) -> jnp.ndarray:
  """labels' shape: class_weight[label] at labelled pixels, 0 at ignored ones (this loss's
  and losses.py's)."""
  valid = labels != ignore_label
  weights = jnp.asarray(class_weight, dtype)[jnp.where(valid, labels, 0)]
  return jnp.where(valid, weights, 0.0)


def _forward(logits, labels, align_corners, ignore_label, class_weight):
  batch, height, width = labels.shape
  widened = _widen(logits, width, align_corners)
  block = max(1, min(height, _BLOCK_VALUES // (batch * width * logits.shape[-1])))
  pad = -height % block   # padded rows read row 0 with an ignored label
  taps = [jnp.asarray(np.pad(t, (0, pad)).reshape(-1, block))
          for t in resample.bilinear_taps(logits.shape[1], height, align_corners, logits.dtype)]
  block_labels = jnp.pad(labels, ((0, 0), (0, pad), (0, 0)), constant_values=ignore_label)
  block_labels = block_labels.reshape(batch, -1, block, width).transpose(1, 2, 0, 3)

  def body(totals, rows):
    lower, upper, frac, row_labels = rows
    row_logits = _rows(widened, lower, upper, frac)                   # [r, B, W, K]
    valid = row_labels != ignore_label
    classes = jax.lax.broadcasted_iota(jnp.int32, row_logits.shape, 3)
    picked = jnp.sum(jnp.where(classes == row_labels[..., None], row_logits, 0.0), axis=-1)
    top = jnp.max(row_logits, axis=-1)
    log_sum = jnp.log(jnp.sum(jnp.exp(row_logits - top[..., None]), axis=-1))
    # As jax.nn.log_softmax rounds: -log p = log(sum exp(x - max)) - (x[label] - max).
    if class_weight is None:
      loss = jnp.sum(jnp.where(valid, log_sum - (picked - top), 0.0))
    else:
      weights = pixel_weights(row_labels, class_weight, ignore_label, row_logits.dtype)
      loss = jnp.sum(jnp.where(valid, (log_sum - (picked - top)) * weights, 0.0))
    # jnp.argmax's first maximum as a min-reduction: argmax is a variadic reduce of
    # (value, index) pairs, slow on XLA:CPU.
    first_top = jnp.min(jnp.where(row_logits == top[..., None], classes, row_logits.shape[-1]),
                        axis=-1)
    hits = jnp.sum(valid & (first_top == row_labels)).astype(totals[1].dtype)
    return (totals[0] + loss, totals[1] + hits), top + log_sum

  zero = jnp.zeros((), _accumulation_dtype(logits))
  (loss, hits), log_normaliser = jax.lax.scan(body, (zero, zero), (*taps, block_labels))
  log_normaliser = log_normaliser.reshape(-1, batch, width)[:height]     # [H, B, W]
  return (loss, hits), (logits, labels, log_normaliser)


@functools.lru_cache(maxsize=None)
def _transposed_taps(in_rows: int, out_rows: int, align_corners: bool, dtype):
  """For each input row i: the output rows that read it and their weights.

  Returns (rows, weights, lower, upper, frac), each [in_rows, span]: output rows
  rows[i] (a run of `span` rows, weight 0 where a row does not read i), the weight of
  input row i in each, and those rows' own taps to recompute them.
  """
  lower, upper, frac = resample.bilinear_taps(in_rows, out_rows, align_corners, dtype)
  matrix = resample.bilinear_matrix(in_rows, out_rows, align_corners, dtype)   # [out, in]
  reads = [np.flatnonzero((lower == i) | (upper == i)) for i in range(in_rows)]
  span = min(out_rows, max(r[-1] - r[0] + 1 if len(r) else 1 for r in reads))
  first = np.array([min(r[0], out_rows - span) if len(r) else 0 for r in reads])
  rows = first[:, None] + np.arange(span)
  weights = matrix[rows, np.arange(in_rows)[:, None]]
  return rows, weights, lower[rows], upper[rows], frac[rows]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _upsampled_ce(logits, labels, align_corners, ignore_label, class_weight):
  return _forward(logits, labels, align_corners, ignore_label, class_weight)[0]


def _backward(align_corners, ignore_label, class_weight, residuals, cotangents):
  logits, labels, log_normaliser = residuals
  grad = cotangents[0]
  width = labels.shape[2]
  widened = _widen(logits, width, align_corners)
  labels = labels.transpose(1, 0, 2)                                    # [H, B, W]
  tables = [jnp.asarray(t) for t in _transposed_taps(logits.shape[1], labels.shape[0],
                                                     align_corners, np.dtype(logits.dtype))]

  def body(_, taps):
    rows, weights, lower, upper, frac = taps
    row_logits = _rows(widened, lower, upper, frac)                    # [span, B, W, K]
    row_labels = jnp.take(labels, rows, axis=0)
    probs = jnp.exp(row_logits - jnp.take(log_normaliser, rows, axis=0)[..., None])
    classes = jax.lax.broadcasted_iota(jnp.int32, row_logits.shape, 3)
    valid = row_labels != ignore_label
    row_grad = jnp.where(valid[..., None], probs - (classes == row_labels[..., None]), 0.0)
    if class_weight is not None:
      row_grad = row_grad * pixel_weights(row_labels, class_weight, ignore_label,
                                          row_grad.dtype)[..., None]
    # Unrolled over the span: as a reduction XLA:CPU hands it to YNNPACK, 10x slower.
    total = sum(weights[j] * row_grad[j] for j in range(row_grad.shape[0]))
    return None, grad * total

  _, widened_grad = jax.lax.scan(body, None, tables)                   # [h, B, W, K]
  columns = resample.bilinear_matrix(logits.shape[2], width, align_corners, logits.dtype)
  logits_grad = jnp.einsum('Ww,hbWk->bhwk', jnp.asarray(columns), widened_grad)
  return logits_grad.astype(logits.dtype), None


_upsampled_ce.defvjp(_forward, _backward)
