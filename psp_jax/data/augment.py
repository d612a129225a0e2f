"""Training augmentation of one example, as mmseg's and semseg's pipelines, in TensorFlow.

Small ops with one job each and `augment`, which composes them as config.augment says, in
this order: rescale, rotate, blur, crop, photometric distortion, pad, flip, normalise.
Randomness is stateless: every op takes its own seed, so an example's augmentation
depends only on (seed, example index).
"""

import math
from typing import Any, Mapping, Tuple

import tensorflow as tf

from psp_jax.base import spec


def resize_nearest(label: tf.Tensor, size) -> tf.Tensor:
  """tf.image.resize(label, size, method='nearest'), pixel for pixel, in about a third of the time.

  TF's kernel copies source pixel floor((i + 0.5) * in / out) (float32, clipped to the
  input) one output pixel at a time; gathering whole rows, then whole columns of the
  transpose, copies the same pixels in contiguous runs.

  Args:
    label: [H, W, C] of any dtype. size: (height, width).
  Returns:
    [height, width, C] of label's dtype.
  """
  def sources(in_size, out_size):
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    index = tf.floor((tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale)
    return tf.minimum(tf.cast(index, tf.int32), in_size - 1)

  height, width = tf.shape(label)[0], tf.shape(label)[1]
  rows = tf.gather(label, sources(height, size[0]))
  columns = tf.gather(tf.transpose(rows, [1, 0, 2]), sources(width, size[1]))
  return tf.transpose(columns, [1, 0, 2])


def random_rescale(image, label, seed, ratio_range, scale=None):
  """Rescales both by a random ratio: image bilinearly, label by nearest neighbour.

  With `scale` None, the image's own size is multiplied by the ratio (semseg's
  RandScale). With `scale` = (long, short), as mmseg's RandomResize(scale, ratio_range,
  keep_ratio=True), the image is fitted, keeping its aspect ratio, into the box
  int(scale * ratio) (mmcv's rescale_size): on ADE20K, short sides of 256 to 1024
  whatever the image's own size.
  """
  ratio = tf.random.stateless_uniform([], seed, ratio_range[0], ratio_range[1])
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  if scale is None:
    size = tf.cast(tf.round(hw * ratio), tf.int32)
  else:
    long_edge = tf.floor(float(max(scale)) * ratio)
    short_edge = tf.floor(float(min(scale)) * ratio)
    factor = tf.minimum(long_edge / tf.reduce_max(hw), short_edge / tf.reduce_min(hw))
    size = tf.cast(tf.floor(hw * factor + 0.5), tf.int32)
  image = tf.image.resize(image, size, method='bilinear')
  label = resize_nearest(label, size)
  return image, label


def largest_size(height: int, width: int, ratio_range, scale=None) -> tuple[int, int]:
  """(height, width) that `random_rescale` gives an image of that size at its largest ratio."""
  ratio = max(ratio_range)
  if scale is None:
    return round(height * ratio), round(width * ratio)
  factor = min(math.floor(max(scale) * ratio) / max(height, width),
               math.floor(min(scale) * ratio) / min(height, width))
  return math.floor(height * factor + 0.5), math.floor(width * factor + 0.5)


def rotate(image: tf.Tensor, label: tf.Tensor, degrees) -> Tuple[tf.Tensor, tf.Tensor]:
  """Rotates both about the image centre, keeping their size (semseg's RandRotate warp).

  Positive `degrees` turn the picture counter-clockwise, as cv2.getRotationMatrix2D and
  np.rot90. The image is sampled bilinearly and the label by nearest neighbour; corners
  that come from outside are padded as `pad_to_crop` pads: mean colour and 255.

  Args:
    image: [H, W, 3] float32 in 0-255. label: [H, W, 1] integer. degrees: scalar.
  Returns:
    ([H, W, 3] float32, [H, W, 1] of label's dtype).
  """
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180)
  cos, sin = tf.cos(radians), tf.sin(radians)
  # ImageProjectiveTransform maps each *output* pixel (x, y) to the input point it samples,
  # so this is the inverse rotation. The centre is that of the pixel grid, as mmcv.imrotate;
  # semseg's (w / 2, h / 2) is half a pixel off it.
  cx, cy = (width - 1) / 2, (height - 1) / 2
  transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                        sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])

  def warp(x, fill, interpolation):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=tf.shape(x)[:2],
        fill_value=fill, interpolation=interpolation, fill_mode='CONSTANT')[0]

  # One fill value serves all channels: rotating the offset from the mean, filled with 0,
  # pads with the mean colour (and blends towards it at the edge, as cv2.warpAffine).
  mean = tf.constant(spec.MEAN_RGB)
  image = warp(image - mean, 0.0, 'BILINEAR') + mean
  label = warp(label, float(spec.IGNORE_LABEL), 'NEAREST')
  return image, label


def random_rotate(image, label, seed, max_degrees: float, prob: float):
  """semseg's RandRotate: with probability `prob`, turn by a uniform angle in +-max_degrees."""
  coin, fraction = tf.unstack(tf.random.stateless_uniform([2], seed))
  degrees = max_degrees * (2 * fraction - 1)
  return tf.cond(coin < prob, lambda: rotate(image, label, degrees), lambda: (image, label))


# cv2.GaussianBlur(image, (5, 5), 0), semseg's RandomGaussianBlur, does not sample a Gaussian
# of sigma 0.3 * ((5 - 1) / 2 - 1) + 0.8 = 1.1: for sigma <= 0 and ksize <= 7 OpenCV's
# getGaussianKernel returns fixed binomial taps.
BLUR_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def gaussian_blur(image: tf.Tensor) -> tf.Tensor:
  """semseg's blur, cv2.GaussianBlur(image, (5, 5), 0), as two depthwise 1-D convolutions.

  Borders are OpenCV's default BORDER_REFLECT_101 (mirror without repeating the edge
  pixel), which is tf.pad's 'REFLECT'; unlike OpenCV on uint8 the result is not rounded.

  Args:
    image: [H, W, C] float32, H and W at least 3.
  Returns:
    [H, W, C] float32.
  """
  radius = len(BLUR_TAPS) // 2
  taps = tf.tile(tf.constant(BLUR_TAPS)[:, None, None], [1, tf.shape(image)[-1], 1])
  image = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], 'REFLECT')
  image = tf.nn.depthwise_conv2d(image, taps[:, None], [1, 1, 1, 1], 'VALID')  # down columns
  image = tf.nn.depthwise_conv2d(image, taps[None], [1, 1, 1, 1], 'VALID')  # along rows
  return image[0]


def random_blur(image, seed, prob: float):
  """semseg's RandomGaussianBlur: `gaussian_blur` with probability `prob`; labels are untouched."""
  blur = tf.random.stateless_uniform([], seed) < prob
  return tf.cond(blur, lambda: gaussian_blur(image), lambda: image)


def pad_to_crop(image, label, crop_size):
  """Pads bottom/right to at least crop_size: image [H, W, 3] with the mean, label with 255."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  pad_h = tf.maximum(crop_size[0] - height, 0)
  pad_w = tf.maximum(crop_size[1] - width, 0)
  # Blocks of the mean colour joined on: ~10x faster than a tf.pad per channel and a concat.
  mean = tf.constant(spec.MEAN_RGB)
  image = tf.concat([image, tf.broadcast_to(mean, [height, pad_w, 3])], axis=1)
  image = tf.concat([image, tf.broadcast_to(mean, [pad_h, width + pad_w, 3])], axis=0)
  label = tf.pad(label, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=spec.IGNORE_LABEL)
  return image, label


def random_crop(image, label, seed, crop_size, cat_max_ratio=1.0, max_tries=10):
  """mmseg's RandomCrop: retry (up to 10 times) while one class covers > cat_max_ratio.

  The window is placed as on the image padded bottom/right to crop_size (`pad_to_crop`),
  but only its part inside the image is cut: the result is at most crop_size, and padding
  it afterwards gives mmseg's crop while copying no more than the crop.
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  padded_height = tf.maximum(height, crop_size[0])
  padded_width = tf.maximum(width, crop_size[1])

  def offsets(i):
    s = tf.random.experimental.stateless_fold_in(seed, i)
    top = tf.random.stateless_uniform([], s, 0, padded_height - crop_size[0] + 1, tf.int32)
    left = tf.random.stateless_uniform([], tf.reverse(s, [0]), 0,
                                       padded_width - crop_size[1] + 1, tf.int32)
    return top, left

  def dominated(top, left):
    """mmseg accepts a crop only if it holds > 1 class and none covers >= cat_max_ratio."""
    crop = label[top:top + crop_size[0], left:left + crop_size[1]]
    # A histogram, ~10x faster than tf.unique_with_counts; labels are >= 0 (uint8 maps).
    counts = tf.math.bincount(tf.cast(crop, tf.int32), minlength=spec.IGNORE_LABEL + 1)
    counts = tf.concat([counts[:spec.IGNORE_LABEL], counts[spec.IGNORE_LABEL + 1:]], axis=0)
    share = tf.cast(tf.reduce_max(counts), tf.float32) / tf.cast(
        tf.maximum(tf.reduce_sum(counts), 1), tf.float32)
    return tf.logical_or(tf.math.count_nonzero(counts) <= 1, share >= cat_max_ratio)

  top, left = offsets(0)
  if cat_max_ratio < 1.0:
    def retry(i, top, left):
      top, left = offsets(i)
      return i + 1, top, left
    _, top, left = tf.while_loop(lambda i, t, l: tf.logical_and(i < max_tries, dominated(t, l)),
                                 retry, (tf.constant(1), top, left))
  return (image[top:top + crop_size[0], left:left + crop_size[1]],
          label[top:top + crop_size[0], left:left + crop_size[1]])


def random_flip(image, label, seed):
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
          tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label))


def photometric_distortion(image: tf.Tensor, seed: tf.Tensor, brightness_delta: float = 32.0,
                           contrast_range: Tuple[float, float] = (0.5, 1.5),
                           saturation_range: Tuple[float, float] = (0.5, 1.5),
                           hue_delta: int = 18) -> tf.Tensor:
  """mmseg's PhotoMetricDistortion: colour jitter of the image only, at mmseg's defaults.

  In mmseg's order, each step with probability 0.5: brightness (add a uniform delta),
  contrast (multiply by a uniform factor; mmseg's `mode` puts it second or last with equal
  chance), saturation (scale HSV saturation), hue (rotate by an integer number of OpenCV's
  2-degree hue steps in [-hue_delta, hue_delta), numpy's randint range). Every step is
  pointwise and clips to [0, 255], as mmseg's uint8 steps do.

  Not bit-exact with mmseg, which goes through uint8 BGR and OpenCV's 8-bit HSV: values
  stay float here (mmseg truncates to an integer after each step, about -0.5 per step on
  average), and TensorFlow's HSV round trip is exact where OpenCV's rounds hue to 2 degrees
  and saturation and value to 1/255.

  Args:
    image: [H, W, 3] float32 RGB in 0-255.
    seed: [2] int32 stateless seed.
  Returns:
    [H, W, 3] float32 in [0, 255].
  """
  coin_seed, amount_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  brighten, contrast, contrast_first, saturate, shift_hue = tf.unstack(
      tf.random.stateless_uniform([5], coin_seed) < 0.5)
  u = tf.unstack(tf.random.stateless_uniform([4], amount_seed))
  delta = brightness_delta * (2 * u[0] - 1)
  alpha = contrast_range[0] + (contrast_range[1] - contrast_range[0]) * u[1]
  factor = saturation_range[0] + (saturation_range[1] - saturation_range[0]) * u[2]
  hue_steps = tf.floor(2 * hue_delta * u[3]) - hue_delta  # OpenCV's 8-bit hue: 180 steps a turn

  def maybe(apply, step, x):
    return tf.cond(apply, lambda: tf.clip_by_value(step(x), 0.0, 255.0), lambda: x)

  image = maybe(brighten, lambda x: x + delta, image)
  image = maybe(contrast & contrast_first, lambda x: x * alpha, image)
  # tf.image's HSV conversions are documented for RGB in [0, 1].
  image = maybe(saturate, lambda x: 255 * tf.image.adjust_saturation(x / 255, factor), image)
  image = maybe(shift_hue, lambda x: 255 * tf.image.adjust_hue(x / 255, hue_steps / 180), image)
  image = maybe(contrast & ~contrast_first, lambda x: x * alpha, image)
  return image


def normalize(image):
  """[H, W, 3] float 0-255 RGB -> normalised with spec.MEAN_RGB / STDDEV_RGB."""
  # Broadcast first: Eigen's subtract and divide broadcasting along an axis of 3 are ~7x slower.
  shape = tf.shape(image)
  return ((image - tf.broadcast_to(tf.constant(spec.MEAN_RGB), shape))
          / tf.broadcast_to(tf.constant(spec.STDDEV_RGB), shape))


def augment(image, label, seed, config: Mapping[str, Any]):
  """Training augmentation of one example; each step is switched by `config` (config.augment).

  Order: rescale, rotate, blur (semseg's RandScale, RandRotate, RandomGaussianBlur, on the
  whole image), pad to crop_size and crop, flip, photometric distortion (after the flip, as
  mmseg, and not on the padding, which mmseg adds after it), normalise. Keys:
    scale_range: (min, max) ratio, or None for no rescale.
    resize_scale: (long, short) box the ratio multiplies (mmseg's RandomResize scale);
      missing or None multiplies the image's own size (semseg's RandScale).
    rotate_degrees: max |angle| of a uniform random rotation; missing, None or 0 is off.
    rotate_prob: chance to rotate when rotate_degrees is set (default 0.5, semseg's p).
    blur_prob: chance of semseg's 5x5 Gaussian blur; missing, None or 0 is off (semseg: 0.5).
    crop_size: (height, width). cat_max_ratio: mmseg's RandomCrop retry threshold.
    flip: random horizontal flip with p 0.5.
    photometric: mmseg's PhotoMetricDistortion at its defaults; missing or False is off.
  Optional keys are read with `config.get`: a config without them does not take those steps.

  Args:
    image: [H, W, 3] uint8. label: [H, W, 1] uint8/int, 255 = ignore.
    seed: [2] int32 stateless seed for this example.
  Returns:
    ([crop_h, crop_w, 3] float32 normalised image, [crop_h, crop_w] int32 label).
  """
  # stateless_split's first rows do not depend on the count: one seed per step, fixed.
  seeds = tf.random.experimental.stateless_split(seed, 6)
  image = tf.ensure_shape(tf.cast(image, tf.float32), [None, None, 3])
  # The label keeps its (uint8) dtype until the end: every step only moves its values.
  if config['scale_range'] is not None:
    image, label = random_rescale(image, label, seeds[0], config['scale_range'],
                                  config.get('resize_scale'))
  if config.get('rotate_degrees'):
    image, label = random_rotate(image, label, seeds[3], config['rotate_degrees'],
                                 config.get('rotate_prob', 0.5))
  if config.get('blur_prob'):
    image = random_blur(image, seeds[4], config['blur_prob'])
  crop = config['crop_size']
  image, label = random_crop(image, label, seeds[1], crop, config['cat_max_ratio'])
  if config.get('photometric'):
    # Pointwise, so distorting before the flip gives mmseg's pixels, and before the padding
    # leaves it the mean colour, as mmseg's data preprocessor pads after the distortion.
    image = photometric_distortion(image, seeds[5])
  image, label = pad_to_crop(image, label, crop)
  if config['flip']:
    image, label = random_flip(image, label, seeds[2])
  return normalize(image), tf.cast(label[..., 0], tf.int32)
