"""The one seam for speed and export: rewrites chosen by `config.model.kernels`.

Each rewrite equals its plain counterpart (psp_jax/models/resample.py, flax's nn.Conv, the model's
plain pyramid, losses.py) up to float rounding, and none changes the parameter tree, so
checkpoints and converters are the same in every mode. tests/models/test_kernels.py holds each
to its plain version; the mmseg parity tests run in 'xla' and 'cpu'.

  'xla'     plain JAX everywhere: XLA's own lowering (GPU, TPU).
  'cpu'     the rewrites below.
  'auto'    'cpu' when the computation is placed on CPU devices, else 'xla'.
  'export'  the plain ops for inputs of any size, as psp_jax.export traces them: the
            resizing and pooling tables computed in the graph from the (symbolic) input
            size, and the stem's max pool as strided slices (jax2onnx writes
            lax.reduce_window as a 4-D MaxPool, which onnxruntime refuses).
"""

import dataclasses
from typing import Callable

import jax

from psp_jax.base import errors
from psp_jax.models import resample
from psp_jax.models.kernels import (conv, cross_entropy, keep, pooling, pyramid, resize,
                                    shape_polymorphic)

MODES = ('auto', 'xla', 'cpu', 'export')


def resolve(mode: str, platform: str | None = None) -> str:
  """'xla' or 'cpu' for `mode` on devices of `platform` (default: JAX's default backend)."""
  if mode not in MODES:
    raise errors.InputError(f'config.model.kernels={mode!r}: use one of {MODES}.')
  if mode != 'auto':
    return mode
  return 'cpu' if (platform or jax.default_backend()) == 'cpu' else 'xla'


def _adaptive_avg_pools(x, output_sizes):
  return [resample.adaptive_avg_pool(x, n) for n in output_sizes]


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The operations of one mode; the defaults are the plain ones."""
  conv_general_dilated: Callable = jax.lax.conv_general_dilated  # for nn.Conv
  keep: Callable | None = None                        # on each ResNet block's output
  max_pool: Callable = resample.max_pool              # the stem's 3x3/2 max pool
  resize_bilinear: Callable = resample.resize_bilinear  # logits and pyramid upsampling
  adaptive_avg_pools: Callable = _adaptive_avg_pools  # the pyramid's bins
  pyramid_bottleneck: type | None = None     # fused PSPHead pyramid + 3x3 conv, or the plain one
  cross_entropy_sums: Callable | None = None  # blockwise loss, or losses.py's plain one


_KERNELS = {
    'xla': Kernels(),
    'cpu': Kernels(conv_general_dilated=conv.conv_general_dilated, keep=keep.keep,
                   max_pool=pooling.max_pool, resize_bilinear=resize.resize_bilinear,
                   pyramid_bottleneck=pyramid.PyramidBottleneck,
                   adaptive_avg_pools=pyramid.adaptive_avg_pools,
                   cross_entropy_sums=cross_entropy.upsampled_cross_entropy_sums),
    'export': Kernels(max_pool=pooling.max_pool,
                      resize_bilinear=shape_polymorphic.resize_bilinear,
                      adaptive_avg_pools=shape_polymorphic.adaptive_avg_pools),
}


def get(mode: str, platform: str | None = None) -> Kernels:
  """The Kernels of `mode` ('auto' resolved for `platform`)."""
  return _KERNELS[resolve(mode, platform)]
