"""Colour-coded label maps, overlays and a legend, for predict.py and TensorBoard.

Images are [H, W, 3] uint8 RGB; label maps [H, W] ints with 255 = ignore (drawn black).
"""

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from psp_jax.base.spec import IGNORE_LABEL


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
  """[H, W] class ids -> [H, W, 3] uint8 colours; ignored or unknown ids are black."""
  table = np.zeros((256, 3), np.uint8)
  table[:len(palette)] = np.asarray(palette, np.uint8)
  label = np.asarray(label)
  return table[np.where((label >= 0) & (label < len(palette)), label, IGNORE_LABEL)]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5,
            rows: int = 256) -> np.ndarray:
  """Blends the colour map over the image (alpha = weight of the colours), `rows` at a
  time: float32 copies of a whole 8000x8000 photo would be 768 MB each."""
  blended = np.empty(image.shape, np.uint8)
  for top in range(0, image.shape[0], rows):
    part = ((1 - alpha) * image[top:top + rows].astype(np.float32)
            + alpha * colours[top:top + rows].astype(np.float32))
    blended[top:top + rows] = np.round(part).astype(np.uint8)
  return blended


def legend(label: np.ndarray, class_names: Sequence[str], palette: Sequence[Sequence[int]],
           width: int, row_height: int = 14) -> np.ndarray:
  """[rows * row_height, width, 3] uint8: a swatch and the name of each class present."""
  present = [c for c in np.unique(label) if 0 <= c < len(class_names)]
  columns = max(1, width // 150)
  rows = max(1, -(-len(present) // columns))
  canvas = Image.new('RGB', (width, rows * row_height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, c in enumerate(present):
    x, y = (i % columns) * (width // columns), (i // columns) * row_height
    draw.rectangle([x + 2, y + 2, x + row_height - 2, y + row_height - 2],
                   fill=tuple(int(v) for v in palette[c]))
    draw.text((x + row_height + 2, y + 1), class_names[c], fill=(0, 0, 0))
  return np.asarray(canvas)


def side_by_side(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                 palette: Sequence[Sequence[int]]) -> np.ndarray:
  """[H, 3W, 3]: the image, the ground truth and the prediction in colour."""
  return np.concatenate([image, colorize(label, palette), colorize(prediction, palette)], 1)
