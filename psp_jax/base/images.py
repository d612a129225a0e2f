"""Image files as the RGB pixels a person sees: EXIF orientation applied, any mode -> RGB.

Phone photos store sensor-order pixels plus an EXIF orientation tag; mmcv's imread applies
the tag, so the training images, the predictions and their overlays must too. PIL's
convert('RGB') clips 16-bit grey (mode 'I;16') instead of scaling it, so that is done here.
"""

import io
import re

import numpy as np
from PIL import Image, ImageOps

from psp_jax.base import errors

_SIXTEEN_BIT_GREY = ('I;16', 'I;16B', 'I;16L', 'I')


def to_rgb(image: Image.Image) -> np.ndarray:
  """[H, W, 3] uint8 RGB of an opened PIL image (L, LA, RGBA, P, CMYK, 16-bit grey, ...),
  after its EXIF orientation; H x W is the oriented size."""
  oriented = ImageOps.exif_transpose(image)
  if oriented.mode in _SIXTEEN_BIT_GREY:  # keep the top 8 bits of a 16-bit range
    grey = np.asarray(oriented, np.int64)
    scale = 257 if grey.max(initial=0) > 255 else 1
    oriented = Image.fromarray((grey // scale).clip(0, 255).astype(np.uint8), 'L')
  return np.asarray(oriented.convert('RGB'))


def read_rgb(path: str, max_pixels: int | None = None) -> np.ndarray:
  """`to_rgb` of the image file at `path`; OSError if it is not a readable image.

  `max_pixels`: an image with more (read from its header, before decoding) is an
  errors.InputError naming its size; None leaves PIL's own limit (decompression bombs).
  """
  try:
    with Image.open(path) as image:
      if max_pixels is not None and image.width * image.height > max_pixels:
        raise _too_large(path, f'{image.width}x{image.height} pixels', max_pixels)
      return to_rgb(image)
  except Image.DecompressionBombError as error:  # PIL's own limit, read from the header
    if max_pixels is None:
      raise
    pixels = re.search(r'\((\d+) pixels\)', str(error))
    raise _too_large(path, f'{pixels.group(1)} pixels' if pixels else 'too many pixels',
                     max_pixels) from None


def _too_large(path: str, size: str, max_pixels: int) -> errors.InputError:
  return errors.InputError(f'{path}: {size}, more than --max_pixels={max_pixels}; downscale '
                           'it, or raise --max_pixels if the machine has the memory.')


def decoded_size(data: bytes, source: str) -> tuple[int, int]:
  """(height, width) of the encoded image `data`, decoded in full (not just its header), so
  that a damaged file fails dataset preparation naming `source`, not training hours in."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return image.height, image.width
  except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
    raise errors.InputError(f'{source}: does not decode as an image ({error}). Replace it '
                            'with an intact copy and prepare the dataset again.') from error
