"""PSPNet: dilated ResNet + pyramid pooling head + auxiliary FCN head (Zhao et al., 2017).

Module and parameter names follow mmsegmentation's concepts (backbone, decode_head,
auxiliary_head, conv_seg) so converted checkpoints read naturally.
"""

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psp_jax.models import resample
from psp_jax.models.conv import conv_general_dilated
from psp_jax.models.resnet import DilatedResNet, batch_norm, conv_init

# mmseg's decode heads initialise the classifier with N(0, 0.01) and a zero bias.
classifier_init = nn.initializers.normal(0.01)


class ConvBNReLU(nn.Module):
  """mmcv's ConvModule with BN and ReLU: conv (no bias) -> BN -> ReLU."""
  features: int
  kernel_size: int
  train: bool
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = self.kernel_size // 2
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=conv_init,
                dtype=self.dtype, param_dtype=self.param_dtype,
                conv_general_dilated=conv_general_dilated, name='conv')(x)
    x = batch_norm(self.train, self.bn_axis_name, self.dtype, self.param_dtype)(name='bn')(x)
    return nn.relu(x)


class PyramidPooling(nn.Module):
  """Pyramid pooling module: one branch per bin count, concatenated with the input.

  Each branch pools to n x n with PyTorch's adaptive (overlapping) bins, projects with
  a 1x1 ConvBNReLU and upsamples bilinearly back to the input size.

  Attributes:
    bins: pooled grid sizes, (1, 2, 3, 6) in the paper.
    channels: output channels of each branch; None means in_channels // len(bins).
    align_corners: upsampling convention, False as mmseg, True as semseg.
  """
  bins: Sequence[int] = (1, 2, 3, 6)
  channels: int | None = None
  align_corners: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """x: [B, h, w, C] -> [B, h, w, C + len(bins) * channels]."""
    size = x.shape[1:3]
    return jnp.concatenate(
        [x] + [resample.resize_bilinear(y, size, self.align_corners)
               for y in self.branches(x, train)], axis=-1)

  @nn.compact
  def branches(self, x: jnp.ndarray, train: bool = False) -> list[jnp.ndarray]:
    """x: [B, h, w, C] -> the branches before upsampling, [B, n, n, channels] per bin."""
    channels = self.channels or x.shape[-1] // len(self.bins)
    return [ConvBNReLU(channels, 1, train, self.bn_axis_name, self.dtype, self.param_dtype,
                       name=f'branch{i}')(pooled)
            for i, pooled in enumerate(resample.adaptive_avg_pools(x, self.bins))]


class _Kernel(nn.Module):
  """A bare conv kernel parameter, stored where nn.Conv stores its own ('conv/kernel')."""
  shape: tuple[int, ...]
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> jnp.ndarray:
    return self.param('kernel', conv_init, self.shape, self.param_dtype)


class PyramidBottleneck(nn.Module):
  """PSPHead's 3x3 ConvBNReLU over concat([x, upsampled branches]), without the concat.

  The same parameters as ConvBNReLU(features, 3) on the concatenation (mmseg's channel
  order: x, then the branches by bin), and the same output up to float rounding; the
  branches' share of the convolution runs at their n x n size
  (`resample.upsampled_conv3x3`), which halves the head's FLOPs.
  """
  features: int
  train: bool
  align_corners: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, branches: Sequence[jnp.ndarray]) -> jnp.ndarray:
    widths = [x.shape[-1]] + [y.shape[-1] for y in branches]
    kernel = _Kernel((3, 3, sum(widths), self.features), self.param_dtype, name='conv')()
    kernel = kernel.astype(self.dtype)
    parts = jnp.split(kernel, np.cumsum(widths)[:-1], axis=2)
    out = conv_general_dilated(
        x.astype(self.dtype), parts[0], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, parts[0].shape,
                                                         ('NHWC', 'HWIO', 'NHWC')))
    for y, part in zip(branches, parts[1:]):
      out = out + resample.upsampled_conv3x3(y.astype(self.dtype), part, x.shape[1:3],
                                             self.align_corners)
    out = batch_norm(self.train, self.bn_axis_name, self.dtype, self.param_dtype)(name='bn')(out)
    return nn.relu(out)


class SegHead(nn.Module):
  """The shared tail of PSPHead and FCNHead: ConvBNReLU -> channel dropout -> 1x1 classifier.

  With `bins` set it first applies the pyramid pooling module (PSPHead); with
  `bins=()` it is mmseg's single-conv FCNHead (num_convs=1, concat_input=False).
  """
  num_classes: int
  channels: int
  bins: Sequence[int] = ()
  ppm_channels: int | None = None
  dropout_rate: float = 0.1
  align_corners: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """x: [B, h, w, C] -> logits [B, h, w, num_classes] (float32, or float64 in float64)."""
    if self.bins:
      branches = PyramidPooling(self.bins, self.ppm_channels, self.align_corners,
                                self.bn_axis_name, self.dtype, self.param_dtype,
                                name='ppm').branches(x, train)
      x = PyramidBottleneck(self.channels, train, self.align_corners, self.bn_axis_name,
                            self.dtype, self.param_dtype, name='bottleneck')(x, branches)
    else:
      x = ConvBNReLU(self.channels, 3, train, self.bn_axis_name, self.dtype, self.param_dtype,
                     name='bottleneck')(x)
    # nn.Dropout2d: whole channels are dropped, so the mask broadcasts over H and W.
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    logits = nn.Conv(self.num_classes, (1, 1), kernel_init=classifier_init,
                     dtype=self.dtype, param_dtype=self.param_dtype,
                     conv_general_dilated=conv_general_dilated, name='conv_seg')(x)
    return logits.astype(jnp.promote_types(self.dtype, jnp.float32))


class PSPNet(nn.Module):
  """PSPNet for semantic segmentation, a pure function of (variables, images).

  `model.apply(variables, images, train=False)` returns
  `{'logits': [B, h, w, K], 'aux_logits': [B, h', w', K]}` in float32 at the
  backbone's output stride (1/8 by default); `upsample_logits` brings them to the
  image size. Training needs `rngs={'dropout': key}` and `mutable=['batch_stats']`.

  Attributes mirror mmsegmentation's `pspnet_r50-d8` config names.
  """
  num_classes: int = 150
  depth: int = 50
  stem: str = 'deep'
  stem_widths: Sequence[int] = (32, 32, 64)
  output_stride: int = 8
  contract_dilation: bool = True
  base_width: int = 64
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  ppm_channels: int | None = None
  channels: int = 512
  aux_channels: int = 256
  aux_in_index: int | None = 2
  dropout_rate: float = 0.1
  align_corners: bool = False
  remat: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
    """images: [B, H, W, 3] normalised (ImageNet mean/std)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be [B, H, W, 3] (NHWC), got shape {images.shape}.')
    features = DilatedResNet(
        depth=self.depth, stem=self.stem, stem_widths=tuple(self.stem_widths),
        output_stride=self.output_stride, contract_dilation=self.contract_dilation,
        base_width=self.base_width, remat=self.remat, bn_axis_name=self.bn_axis_name,
        dtype=self.dtype, param_dtype=self.param_dtype, name='backbone')(images.astype(self.dtype), train)
    head = functools.partial(SegHead, self.num_classes, dropout_rate=self.dropout_rate,
                             align_corners=self.align_corners, bn_axis_name=self.bn_axis_name,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    outputs = {'logits': head(self.channels, tuple(self.pool_scales), self.ppm_channels,
                              name='decode_head')(features[3], train)}
    if self.aux_in_index is not None:
      outputs['aux_logits'] = head(self.aux_channels, name='auxiliary_head')(
          features[self.aux_in_index], train)
    return outputs


def upsample_logits(logits: jnp.ndarray, size: tuple[int, int],
                    align_corners: bool = False) -> jnp.ndarray:
  """Bilinear upsampling of [B, h, w, K] logits to [B, H, W, K], as PyTorch's F.interpolate."""
  return resample.resize_bilinear(logits, size, align_corners)


# float64 needs jax_enable_x64; the parity tests use it to compare with PyTorch's .double().
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16,
           'float64': jnp.float64}


def build_model(config: Mapping[str, Any], **overrides: Any) -> PSPNet:
  """Builds a PSPNet from `config.model` (an ml_collections.ConfigDict or a dict).

  `overrides` are applied last, e.g. `bn_axis_name='batch'` from the train loop.
  Unknown keys are an error, so a typo in a config cannot be silently ignored.
  """
  kwargs = dict(config)
  kwargs.update(overrides)
  for key in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in _DTYPES:
        raise ValueError(f'config.model.{key} must be one of {sorted(_DTYPES)}, '
                         f'got {kwargs[key]!r}.')
      kwargs[key] = _DTYPES[kwargs[key]]
  known = set(PSPNet.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f'Unknown config.model keys {unknown}; PSPNet accepts {sorted(known)}.')
  for key in ('stem_widths', 'pool_scales'):
    if key in kwargs:
      kwargs[key] = tuple(kwargs[key])
  return PSPNet(**kwargs)
