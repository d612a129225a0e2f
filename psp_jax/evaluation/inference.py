"""Whole-image and sliding-window inference, multi-scale and flip (mmseg / semseg test modes).

mmseg's EncoderDecoder path, step by step: resize the image to the test scale, run the
network (whole image, or overlapping crops whose logits are averaged), bilinearly upsample
the 1/8 logits to the network input, then bilinearly resize them to the original image
size and take the argmax. With several scales or flip, softmax probabilities at the
original size are averaged (mmseg's SegTTAModel, semseg's test.py). CSAIL's protocol
(resize='csail') resizes the image with PIL to each of several short sides and upsamples
the 1/8 logits straight to the original size.

Arrays are NHWC numpy/jax; an image is [H, W, 3] in 0-255 RGB, a label map [H, W].
"""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from psp_jax.base import errors, spec
from psp_jax.models import resample


@dataclasses.dataclass(frozen=True)
class TestProtocol:
  """config.test, read once: how an image is resized, run and scored (psp_jax/config/__init__.py)."""
  mode: str = 'whole'                        # 'whole' or 'slide'
  crop_size: tuple[int, int] | None = None   # slide windows
  stride: tuple[int, int] | None = None
  window_batch: int = 4
  size_divisor: int | None = None            # pad the network input to a multiple of it
  resize: str = 'keep_ratio'                 # see `test_size`
  test_scale: tuple[int, int] | None = None
  base_size: int | None = None
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False
  short_sides: tuple[int, ...] = (300, 375, 450, 525, 600)  # 'csail' (see `csail_size`)
  max_size: int = 1000
  size_multiple: int = 8

  __test__ = False  # not a pytest test class

  def __post_init__(self):
    if self.resize == 'csail' and (self.mode != 'whole' or self.size_divisor):
      raise errors.InputError(
          f"config.test.resize='csail' runs whole images at multiples of size_multiple and "
          f'upsamples their 1/8 logits straight to the original size; it takes '
          f"mode='whole' and size_divisor=None, got mode={self.mode!r}, "
          f'size_divisor={self.size_divisor}.')

  @classmethod
  def from_config(cls, test) -> 'TestProtocol':
    def tuple_or_none(value):
      return None if value is None else tuple(value)
    return cls(mode=test.mode, crop_size=tuple_or_none(test.crop_size),
               stride=tuple_or_none(test.stride), window_batch=test.window_batch,
               size_divisor=test.size_divisor, resize=test.resize,
               test_scale=tuple_or_none(test.test_scale), base_size=test.base_size,
               scales=tuple(test.scales), flip=bool(test.flip),
               short_sides=tuple(test.short_sides), max_size=test.max_size,
               size_multiple=test.size_multiple)

  def input_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
    """The network input size of each pass over an image of height x width (before flip)."""
    if self.resize == 'csail':
      return [csail_size(height, width, s, self.max_size, self.size_multiple)
              for s in self.short_sides]
    return [test_size(height, width, self.resize, s, self.test_scale, self.base_size)
            for s in self.scales]

  @property
  def single_pass(self) -> bool:
    """One whole-image pass per image at a padded size: the bucketed, pmapped evaluation."""
    return (self.mode == 'whole' and self.scales == (1.0,) and not self.flip
            and bool(self.size_divisor))


def round_up(n: int, divisor: int) -> int:
  """The smallest multiple of `divisor` >= n (a shape bucket)."""
  return -(-n // divisor) * divisor


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
  """mmcv's `Resize(scale=(long, short), keep_ratio=True)`: largest size within both edges."""
  factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
  return int(height * factor + 0.5), int(width * factor + 0.5)


def base_size(height: int, width: int, base: int, scale: float = 1.0) -> tuple[int, int]:
  """semseg's test resize: the long side becomes round(base * scale), keeping the ratio."""
  long_side = round(base * scale)
  if height > width:
    return long_side, round(long_side / height * width)
  return round(long_side / width * height), long_side


def csail_size(height: int, width: int, short_side: int, max_size: int,
               multiple: int) -> tuple[int, int]:
  """mit_semseg's ValDataset / TestDataset test size.

  The short side becomes `short_side` unless the long side would pass `max_size`; the
  size is truncated, then rounded up to a multiple of `multiple` (its padding_constant),
  and the image is resized to exactly that size, not padded.
  """
  scale = min(short_side / float(min(height, width)), max_size / float(max(height, width)))
  return round_up(int(height * scale), multiple), round_up(int(width * scale), multiple)


def slide_windows(height: int, width: int, crop: Sequence[int],
                  stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
  """mmseg's slide_inference grid: (y1, y2, x1, x2) of each window, the last ones flush
  with the bottom/right edge; windows shrink to the image where it is smaller than crop."""
  rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
  cols = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
  windows = []
  for row in range(rows):
    for col in range(cols):
      y2, x2 = min(row * stride[0] + crop[0], height), min(col * stride[1] + crop[1], width)
      windows.append((max(y2 - crop[0], 0), y2, max(x2 - crop[1], 0), x2))
  return windows


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Bilinear resize without antialiasing (cv2.INTER_LINEAR / half-pixel centres), rounded
  to uint8 as mmcv's imrescale returns it. [H, W, 3] -> [h, w, 3] uint8."""
  if tuple(size) == image.shape[:2]:
    return image
  rows = resample.bilinear_matrix(image.shape[0], size[0], align_corners=False)
  cols = resample.bilinear_matrix(image.shape[1], size[1], align_corners=False)
  # Rows, then columns: two matrix products (one three-operand einsum loops over h*H*W*w).
  resized = np.tensordot(rows, image.astype(np.float32), axes=(1, 0))      # [h, W, 3]
  resized = np.tensordot(resized, cols, axes=(1, 1)).transpose(0, 2, 1)    # [h, w, 3]
  return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def resize_image_pil(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """PIL's Image.resize(size, BILINEAR), as mit_semseg's imresize: unlike `resize_image`,
  the filter widens when shrinking (antialiased). [H, W, 3] uint8 -> [h, w, 3] uint8."""
  resized = Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]),
                                                                Image.BILINEAR)
  return np.asarray(resized)


def normalize(image: np.ndarray) -> np.ndarray:
  """[..., 3] 0-255 RGB -> float32, normalised as the model was trained (spec); numpy
  arrays or traced jax arrays (psp_jax.export traces it into its artifacts)."""
  return (image.astype(np.float32) - np.float32(spec.MEAN_RGB)) / np.float32(spec.STDDEV_RGB)


@functools.partial(jax.jit, static_argnums=0)
def _logits_at_input_size(model, variables, images):
  """PSPNet.segment, jitted per (model, shape) and shared by all Predictors, so
  evaluating new variables of the same model does not recompile."""
  return model.apply(variables, images, method='segment')


@functools.partial(jax.jit, static_argnums=0)
def _logits_at_output_stride(model, variables, images):
  """The decode head's logits as the network gives them, jitted as _logits_at_input_size."""
  return model.apply(variables, images)['logits']


class Predictor:
  """Logits of one image at its own size, whole or by sliding window, jitted per shape.

  Every distinct input shape compiles the network once; `compiled_shapes` lists them so
  that a caller can log (and bound) recompilation. `size_divisor` pads each image at the
  bottom/right (with 0, i.e. the mean colour after normalisation) to a multiple of it and
  crops the logits back, as mmseg's data preprocessor with `test_cfg=dict(size_divisor=N)`
  does: images of many sizes then share a few shape buckets. Slide mode feeds windows in
  batches of `window_batch` (the last batch padded), so it compiles once per window shape.
  `upsample=False` (whole images, no padding) returns the logits at the network's output
  stride, for CSAIL's protocol, which upsamples them straight to the original size.
  """

  def __init__(self, model, variables: Any, mode: str = 'whole',
               crop_size: Sequence[int] | None = None, stride: Sequence[int] | None = None,
               window_batch: int = 4, size_divisor: int | None = None, upsample: bool = True):
    if mode not in ('whole', 'slide'):
      raise errors.InputError(f"mode={mode!r}: use 'whole' or 'slide'.")
    if mode == 'slide' and not (crop_size and stride):
      raise errors.InputError('slide mode needs crop_size and stride.')
    if not upsample and (mode != 'whole' or size_divisor):
      raise errors.InputError('logits at the output stride (upsample=False) need whole '
                              'images without a size divisor.')
    self.model, self.variables, self.mode = model, variables, mode
    self.crop_size, self.stride, self.window_batch = crop_size, stride, window_batch
    self.size_divisor, self.upsample = size_divisor, upsample
    self.compiled_shapes: set[tuple[int, ...]] = set()

  def _run(self, images: np.ndarray) -> jax.Array:
    self.compiled_shapes.add(images.shape)
    run = _logits_at_input_size if self.upsample else _logits_at_output_stride
    return run(self.model, self.variables, jnp.asarray(images))

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """[H, W, 3] normalised float image -> [H, W, num_classes] float32 logits
    ([ceil(H / 8), ceil(W / 8), num_classes] with upsample=False, output stride 8)."""
    height, width = image.shape[:2]
    if self.size_divisor:
      padded = [round_up(n, self.size_divisor) for n in (height, width)]
      image = np.pad(image, ((0, padded[0] - height), (0, padded[1] - width), (0, 0)))
    logits = self._logits(image)
    return logits[:height, :width] if self.upsample else logits

  def _logits(self, image: np.ndarray) -> np.ndarray:
    if self.mode == 'whole':
      return np.asarray(self._run(image[None])[0])
    height, width = image.shape[:2]
    windows = slide_windows(height, width, self.crop_size, self.stride)
    crops = np.stack([image[y1:y2, x1:x2] for y1, y2, x1, x2 in windows])
    padding = (-len(crops)) % self.window_batch
    crops = np.concatenate([crops, np.zeros((padding, *crops.shape[1:]), crops.dtype)])
    logits = np.concatenate([np.asarray(self._run(crops[i:i + self.window_batch]))
                             for i in range(0, len(crops), self.window_batch)])
    total = np.zeros((height, width, logits.shape[-1]), np.float32)
    count = np.zeros((height, width, 1), np.float32)
    for (y1, y2, x1, x2), window_logits in zip(windows, logits):
      total[y1:y2, x1:x2] += window_logits
      count[y1:y2, x1:x2] += 1
    return total / count


def predictor_for_test(model, variables: Any, test: TestProtocol) -> Predictor:
  """The Predictor `test` asks for (mode, crop, stride, window batch, size divisor, and
  for CSAIL's protocol the logits at the output stride)."""
  return Predictor(model, variables, mode=test.mode, crop_size=test.crop_size, stride=test.stride,
                   window_batch=test.window_batch, size_divisor=test.size_divisor,
                   upsample=test.resize != 'csail')


@functools.partial(jax.jit, static_argnames=('size', 'align_corners'))
def _resize_logits(logits, size, align_corners):
  return resample.resize_bilinear(logits[None], size, align_corners)[0]


def test_size(height: int, width: int, resize: str, scale: float = 1.0,
              test_scale: Sequence[int] | None = None, base: int | None = None) -> tuple[int, int]:
  """The network input size of an image: see `predict` for `resize`."""
  if resize == 'keep_ratio':
    return rescale_size(height, width, [round(e * scale) for e in test_scale])
  if resize == 'base_size':
    return base_size(height, width, base, scale)
  if resize == 'none':
    return round(height * scale), round(width * scale)
  raise errors.InputError(f"resize={resize!r}: use 'keep_ratio', 'base_size', 'none' or "
                          "'csail'.")


def predict(predictor: Predictor, image: np.ndarray, test: TestProtocol) -> np.ndarray:
  """Class scores for one image at its original size: [H, W, num_classes].

  Args:
    image: [H, W, 3] uint8 RGB, as read from disk.
    test: its scales (multipliers of the test scale), flip (add horizontally flipped
      inputs) and resize: 'keep_ratio' (mmseg: `test_scale` = (long, short) edge limits),
      'base_size' (semseg: the long side becomes `base_size` x scale), 'none', or
      'csail' (one input per short side, `csail_size`, resized with PIL; `predictor`
      then gives 1/8 logits, upsampled once, to the original size, as CSAIL's decoder
      with segSize).
  Returns:
    Logits when there is one input (one scale, no flip), as mmseg's `seg_logits`;
    otherwise softmax probabilities averaged over the inputs (mmseg TTA, semseg ms,
    CSAIL's eval.py).
  """
  align_corners = predictor.model.align_corners
  return np.asarray(_scores([_resize_logits(logits, image.shape[:2], align_corners)
                             for logits in _input_logits(predictor, image, test)]))


@dataclasses.dataclass(frozen=True)
class Tiles:
  """How predict.py runs a network input of more than `max_pixels`: in windows.

  The windows (`window` pixels at `stride`, the last ones flush with the edge, as
  `slide_windows`) are multiples of the output stride and start on its grid, so their
  logits at the output stride add into one grid for the whole input, averaged where they
  overlap, and upsampled to the image as a whole pass's are. Memory then grows with the
  image by that grid (num_classes x 4 bytes per output-stride cell), not by the network's
  activations or logits at full size; pixels near a window's border lose the context past
  it, so the labels there can differ from a whole-image pass.
  """
  max_pixels: int
  window: tuple[int, int]
  stride: tuple[int, int]

  @classmethod
  def for_crop(cls, max_pixels: int, crop_size: Sequence[int],
               stride: Sequence[int] | None = None, output_stride: int = 8) -> 'Tiles':
    """Windows of `crop_size` (the scale the model knows) at `stride` (default 2/3 of the
    window, mmseg's slide stride for its crops), both rounded down to the output stride."""
    def down(n):
      return max(output_stride, n // output_stride * output_stride)
    window = tuple(down(n) for n in crop_size)
    stride = stride or [2 * n // 3 for n in window]
    return cls(max_pixels, window, tuple(down(n) for n in stride))

  def applies(self, height: int, width: int) -> bool:
    return height * width > self.max_pixels

  def grid_logits(self, predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """[h, w, 3] uint8 -> [ceil(h / s), ceil(w / s), K] logits at the output stride s of
    the image padded to multiples of s (with the mean colour, as `size_divisor` pads)."""
    model, s = predictor.model, predictor.model.output_stride
    if any(n % s for n in self.window + self.stride):
      raise errors.InputError(f'tile window {self.window} and stride {self.stride} must be '
                              f'multiples of the output stride, {s}.')
    height, width = (round_up(n, s) for n in image.shape[:2])
    windows = slide_windows(height, width, self.window, self.stride)
    total = count = None
    for i in range(0, len(windows), predictor.window_batch):
      batch = windows[i:i + predictor.window_batch]
      crops = np.zeros((predictor.window_batch, batch[0][1] - batch[0][0],
                        batch[0][3] - batch[0][2], 3), np.float32)  # padding: the mean colour
      for crop, (y1, y2, x1, x2) in zip(crops, batch):
        inside = normalize(image[y1:y2, x1:x2])
        crop[:inside.shape[0], :inside.shape[1]] = inside
      predictor.compiled_shapes.add(crops.shape)
      logits = np.asarray(_logits_at_output_stride(model, predictor.variables,
                                                   jnp.asarray(crops)))
      if total is None:
        total = np.zeros((height // s, width // s, logits.shape[-1]), np.float32)
        count = np.zeros((height // s, width // s, 1), np.float32)
      for window_logits, (y1, y2, x1, x2) in zip(logits, batch):
        total[y1 // s:y2 // s, x1 // s:x2 // s] += window_logits
        count[y1 // s:y2 // s, x1 // s:x2 // s] += 1
    return total / count


def predict_labels(predictor: Predictor, image: np.ndarray, test: TestProtocol,
                   max_scores: int = 1 << 24, tiles: Tiles | None = None) -> np.ndarray:
  """`predict(...).argmax(-1)`, [H, W] int32, holding about `max_scores` scores at the
  image's size at a time (blocks of rows): a 8000x8000 photo's 150 class scores alone
  would be 38 GB. With `tiles`, a pass whose network input has more than
  `tiles.max_pixels` pixels runs in `Tiles` instead (whole or slide mode)."""
  height, width = image.shape[:2]
  align_corners = predictor.model.align_corners
  passes = []  # (logits [a, b, K], rows [H, a], cols [W, b]): scores = rows @ logits @ cols.T
  for resized, flipped in _inputs(image, test):
    h, w = resized.shape[:2]
    if tiles and predictor.upsample and tiles.applies(h, w):
      grid = tiles.grid_logits(predictor, resized[:, ::-1] if flipped else resized)
      s = predictor.model.output_stride
      rows, cols = (resample.bilinear_matrix(n, n * s, align_corners)[:size]
                    for n, size in zip(grid.shape[:2], (h, w)))
      cols = cols[::-1] if flipped else cols  # output column c reads input column w - 1 - c
      rows, cols = (m if size == n else resample.bilinear_matrix(n, size, align_corners) @ m
                    for m, n, size in ((rows, h, height), (cols, w, width)))
      passes.append((jnp.asarray(grid), rows, cols))
    else:
      logits = _network_logits(predictor, resized, flipped)
      passes.append((logits, resample.bilinear_matrix(logits.shape[0], height, align_corners,
                                                      logits.dtype),
                     resample.bilinear_matrix(logits.shape[1], width, align_corners,
                                              logits.dtype)))
  block = max(1, max_scores // (width * passes[0][0].shape[-1]))
  labels = np.empty((height, width), np.int32)
  for top in range(0, height, block):
    scores = _scores([resample.apply_separable(x[None], rows[top:top + block], cols)[0]
                      for x, rows, cols in passes])
    labels[top:top + block] = np.asarray(jnp.argmax(scores, axis=-1))
  return labels


def _inputs(image: np.ndarray, test: TestProtocol):
  """(image resized to the network input, flipped?) of each test input (scale, flip)."""
  resize = resize_image_pil if test.resize == 'csail' else resize_image
  for size in test.input_sizes(*image.shape[:2]):
    resized = resize(image, size)
    for flipped in ((False, True) if test.flip else (False,)):
      yield resized, flipped


def _network_logits(predictor: Predictor, resized: np.ndarray, flipped: bool) -> jax.Array:
  """The predictor's logits [h, w, K] of one test input, the flip undone."""
  x = normalize(resized)
  logits = predictor(x[:, ::-1] if flipped else x)
  return jnp.asarray(logits[:, ::-1] if flipped else logits)


def _input_logits(predictor: Predictor, image: np.ndarray, test: TestProtocol) -> list:
  """The network's logits [h, w, K] of each test input (scale, flip), flips undone."""
  return [_network_logits(predictor, resized, flipped)
          for resized, flipped in _inputs(image, test)]


def _scores(all_scores: list):
  """One input's upsampled logits as they are, or the softmax averaged over several."""
  if len(all_scores) == 1:
    return all_scores[0]
  return sum(jax.nn.softmax(scores, axis=-1) for scores in all_scores) / len(all_scores)

