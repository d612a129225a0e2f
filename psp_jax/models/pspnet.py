"""PSPNet: dilated ResNet + pyramid pooling head + auxiliary FCN head (Zhao et al., 2017).

Module and parameter names follow mmsegmentation's concepts (backbone, decode_head,
auxiliary_head, conv_seg) so converted checkpoints read naturally. The operations a
mode of psp_jax.models.kernels rewrites for speed come in as `ops`; the parameters are the same.
"""

import functools
import numbers
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from psp_jax.base import errors
from psp_jax.models import kernels as kernel_lib, resnet
from psp_jax.models.resnet import DilatedResNet, module_defs, ModuleDef

# mmseg's decode heads initialise the classifier with N(0, 0.01) and a zero bias.
classifier_init = nn.initializers.normal(0.01)


def check_bins(bins: Sequence[int], field: str) -> None:
  """Pyramid bin counts are whole numbers >= 1 (an empty tuple: no pyramid)."""
  if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
             for n in bins):
    raise errors.InputError(f'{field}={tuple(bins)}: each bin count must be a whole number '
                            '>= 1, (1, 2, 3, 6) in the paper; () for a dilated FCN.')


def check_fields(model: 'PSPNet') -> None:
  """Every field of a PSPNet that cannot build a network, as 'field=value: what is allowed'."""
  def positive(field, allow_none=False):
    value = getattr(model, field)
    if allow_none and value is None:
      return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
      raise errors.InputError(f'{field}={value!r}: give a whole number >= 1'
                              f'{" or None" if allow_none else ""}.')
  for field in ('num_classes', 'channels', 'aux_channels'):
    positive(field)
  positive('ppm_channels', allow_none=True)
  check_bins(model.pool_scales, 'pool_scales')
  resnet.check_backbone(model.depth, model.stem, model.stem_widths, model.output_stride,
                        model.base_width)
  if model.kernels not in kernel_lib.MODES:  # 'auto' is resolved where the model runs
    raise errors.InputError(f'kernels={model.kernels!r}: use one of {kernel_lib.MODES}.')
  if model.aux_in_index not in (None, 0, 1, 2, 3):
    raise errors.InputError(f'aux_in_index={model.aux_in_index!r}: use a stage index 0-3 '
                            '(2, stage 3, in mmseg), or None for no auxiliary head.')
  if not 0 <= model.dropout_rate < 1:
    raise errors.InputError(f'dropout_rate={model.dropout_rate}: must be in [0, 1).')
  if not 0 <= model.bn_momentum <= 1:
    raise errors.InputError(f'bn_momentum={model.bn_momentum}: must be in [0, 1] '
                            '(PyTorch\'s convention, 0.1).')


def check_images(images: jnp.ndarray, output_stride: int) -> None:
  """Images the network can take: [B, H, W, 3], floating, at least `output_stride` pixels."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise errors.InputError(f'images must be [B, H, W, 3] (NHWC), got shape {images.shape}.')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise errors.InputError(
        f'images are {images.dtype}: PSPNet takes floating images normalised with ImageNet\'s '
        'mean and standard deviation; psp_jax.normalize(images) does that from 0-255 RGB.')
  small = [d for d in images.shape[1:3] if isinstance(d, int) and d < output_stride]
  if small:
    raise errors.InputError(
        f'images of {images.shape[1]}x{images.shape[2]} pixels: each side must be at least '
        f'the output stride, {output_stride} (smaller images all give one logit cell).')


class ConvBNReLU(nn.Module):
  """mmcv's ConvModule with BN and ReLU: conv (no bias, 'same' padding) -> BN -> ReLU."""
  features: int
  kernel_size: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    pad = self.kernel_size // 2
    x = self.conv(self.features, (self.kernel_size,) * 2, padding=((pad, pad), (pad, pad)),
                  name='conv')(x)
    return nn.relu(self.norm(name='bn')(x))


class PyramidPooling(nn.Module):
  """The pyramid pooling module, as the paper draws it.

  For each bin count n: adaptive average pool to n x n (PyTorch's overlapping bins),
  1x1 ConvBNReLU, bilinear upsampling back to the input size; the branches are
  concatenated after the input.

  Attributes:
    bins: pooled grid sizes, (1, 2, 3, 6) in the paper.
    channels: output channels of each branch; None means in_channels // len(bins).
    align_corners: upsampling convention, False as mmseg, True as semseg.
  """
  bins: Sequence[int] = (1, 2, 3, 6)
  conv: ModuleDef | None = None
  norm: ModuleDef | None = None
  channels: int | None = None
  align_corners: bool = False
  ops: kernel_lib.Kernels = kernel_lib.Kernels()
  train: bool = False  # BatchNorm's mode when `norm` is None

  def __post_init__(self):
    check_bins(self.bins, 'bins')
    if self.channels is not None and self.channels < 1:
      raise errors.InputError(f'PyramidPooling(channels={self.channels}): give at least 1, '
                              'or None for in_channels // len(bins).')
    super().__post_init__()

  def __call__(self, x: jnp.ndarray,
               branches: Sequence[jnp.ndarray] | None = None) -> jnp.ndarray:
    """x: [B, h, w, C] -> [B, h, w, C + len(bins) * channels].

    `branches`: `self.branches(x)` if the caller already has them (the fused head).
    """
    if branches is None:
      branches = self.branches(x)
    upsampled = [self.ops.resize_bilinear(y, x.shape[1:3], self.align_corners)
                 for y in branches]
    return jnp.concatenate([x] + upsampled, axis=-1)

  @nn.compact
  def branches(self, x: jnp.ndarray) -> list[jnp.ndarray]:
    """x: [B, h, w, C] -> the branches before upsampling, [B, n, n, channels] per bin."""
    channels = self.channels or x.shape[-1] // len(self.bins)
    conv, norm = resnet.default_layers(self.conv, self.norm, self.train)
    return [ConvBNReLU(channels, 1, conv, norm, name=f'branch{i}')(pooled)
            for i, pooled in enumerate(self.ops.adaptive_avg_pools(x, self.bins))]


class SegHead(nn.Module):
  """mmseg's PSPHead (with `bins`) or FCNHead (`bins=()`, one conv, no concat_input):
  [pyramid pooling ->] 3x3 ConvBNReLU -> channel dropout -> 1x1 classifier."""
  num_classes: int
  channels: int
  conv: ModuleDef
  norm: ModuleDef
  bins: Sequence[int] = ()
  ppm_channels: int | None = None
  dropout_rate: float = 0.1
  align_corners: bool = False
  ops: kernel_lib.Kernels = kernel_lib.Kernels()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               with_pyramid: bool = False) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
    """x: [B, h, w, C] -> logits [B, h, w, num_classes]; with `with_pyramid`,
    (pyramid [B, h, w, C + len(bins) * ppm_channels], logits)."""
    pyramid = None
    if self.bins:
      ppm = PyramidPooling(self.bins, self.conv, self.norm, self.ppm_channels,
                           self.align_corners, self.ops, name='ppm')
      if self.ops.pyramid_bottleneck:  # the same parameters, without the concatenation
        branches = ppm.branches(x)
        # The concatenation the fused bottleneck avoids, made only when someone reads it,
        # so that capture_intermediates records the same calls in every mode.
        if with_pyramid or self.is_mutable_collection('intermediates'):
          pyramid = ppm(x, branches)
        x = self.ops.pyramid_bottleneck(self.channels, self.conv, self.norm, self.align_corners,
                                        name='bottleneck')(x, branches)
      else:
        pyramid = ppm(x)
        x = ConvBNReLU(self.channels, 3, self.conv, self.norm, name='bottleneck')(pyramid)
    else:
      x = ConvBNReLU(self.channels, 3, self.conv, self.norm, name='bottleneck')(x)
    # nn.Dropout2d: whole channels are dropped, so the mask broadcasts over H and W.
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    logits = self.conv(self.num_classes, (1, 1), use_bias=True, kernel_init=classifier_init,
                       name='conv_seg')(x)
    return (pyramid, logits) if with_pyramid else logits


class PSPNet(nn.Module):
  """PSPNet for semantic segmentation, a pure function of (variables, images).

  `model.apply(variables, images, train=False)` returns
  `{'logits': [B, h, w, K], 'aux_logits': [B, h', w', K]}` (float32, or float64 in
  float64) at the backbone's output stride (1/8 by default);
  `model.apply(variables, images, method='segment')` gives eval logits at the input size.
  Training needs `rngs={'dropout': key}` and `mutable=['batch_stats']`.

  Attributes mirror mmsegmentation's `pspnet_r50-d8` config names; `kernels` chooses
  the speed rewrites of psp_jax.models.kernels ('auto', 'xla' or 'cpu').
  """
  num_classes: int = 150
  depth: int = 50
  stem: str = 'deep'
  stem_widths: Sequence[int] = (32, 32, 64)
  output_stride: int = 8
  contract_dilation: bool = True
  dilate_basic_conv2: bool = False
  base_width: int = 64
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  ppm_channels: int | None = None
  channels: int = 512
  aux_channels: int = 256
  aux_in_index: int | None = 2
  dropout_rate: float = 0.1
  align_corners: bool = False
  bn_momentum: float = 0.1
  remat: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernels: str = 'auto'

  def __post_init__(self):
    try:
      check_fields(self)
    except errors.InputError as error:
      raise errors.InputError(f'PSPNet {error}') from None
    super().__post_init__()

  @property
  def ops(self) -> kernel_lib.Kernels:
    return kernel_lib.get(self.kernels)

  def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
    """images: [B, H, W, 3] floating, normalised (ImageNet mean/std, `psp_jax.normalize`)."""
    return self._forward(images, train, False)

  def features(self, images: jnp.ndarray, train: bool = False) -> dict[str, Any]:
    """What the network computes on the way, the same tree and values in every kernels mode.

    `model.apply(variables, images, method='features')` returns
      'stages': the backbone's four stage outputs, [B, ~H/4, ~W/4, C1] ... [B, h, w, C4];
      'pyramid': the pyramid pooling module's output as the paper draws it, the stage-4
        features and the upsampled branches concatenated, [B, h, w, C4 + len(bins) * c]
        (absent without bins);
      'logits' and 'aux_logits' (absent without the auxiliary head), as `__call__`.
    """
    return self._forward(images, train, True)

  @nn.compact
  def _forward(self, images: jnp.ndarray, train: bool, with_features: bool) -> dict[str, Any]:
    check_images(images, self.output_stride)
    ops = self.ops
    conv, norm = module_defs(train, self.bn_axis_name, self.dtype, self.param_dtype, ops,
                             self.bn_momentum)
    features = DilatedResNet(
        conv, norm, max_pool=ops.max_pool, keep=ops.keep, depth=self.depth, stem=self.stem,
        stem_widths=tuple(self.stem_widths), output_stride=self.output_stride,
        contract_dilation=self.contract_dilation, dilate_basic_conv2=self.dilate_basic_conv2,
        base_width=self.base_width, remat=self.remat, name='backbone')(images.astype(self.dtype))
    head = functools.partial(SegHead, self.num_classes, conv=conv, norm=norm,
                             dropout_rate=self.dropout_rate, align_corners=self.align_corners,
                             ops=ops)
    decoded = head(self.channels, bins=tuple(self.pool_scales), ppm_channels=self.ppm_channels,
                   name='decode_head')(features[3], train, with_pyramid=with_features)
    pyramid, logits = decoded if with_features else (None, decoded)
    outputs = {'logits': logits}
    if self.aux_in_index is not None:
      outputs['aux_logits'] = head(self.aux_channels, name='auxiliary_head')(
          features[self.aux_in_index], train)
    logits_dtype = jnp.promote_types(self.dtype, jnp.float32)
    outputs = {key: value.astype(logits_dtype) for key, value in outputs.items()}
    if with_features:
      outputs['stages'] = list(features)
      if pyramid is not None:
        outputs['pyramid'] = pyramid
    return outputs

  def upsample(self, logits: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
    """[B, h, w, K] -> [B, H, W, K]: bilinear, as F.interpolate with the model's align_corners."""
    return self.ops.resize_bilinear(logits, tuple(size), self.align_corners)

  def segment(self, images: jnp.ndarray) -> jnp.ndarray:
    """Eval-mode logits upsampled to the input size: [B, H, W, 3] -> [B, H, W, K]."""
    return self.upsample(self(images, train=False)['logits'], images.shape[1:3])


# float64 needs jax_enable_x64; the parity tests use it to compare with PyTorch's .double().
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16,
           'float64': jnp.float64}


def build_model(config: Mapping[str, Any] | None = None, **overrides: Any) -> PSPNet:
  """A PSPNet from `config.model` (an ml_collections.ConfigDict or a dict), keywords, or both.

  `build_model(config.model)` as train.py does; `build_model(num_classes=3, depth=18)`
  from keywords alone (PSPNet's defaults are mmseg's pspnet_r50-d8); `overrides` are
  applied last, e.g. `bn_axis_name='batch'` from the train loop. dtypes may be names
  ('bfloat16'). Unknown keys are an error, so a typo in a config cannot be silently
  ignored; so is any value that cannot build a network, before anything is traced.
  """
  kwargs = dict(config or {})
  kwargs.update(overrides)
  for key in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in _DTYPES:
        raise errors.InputError(f'config.model.{key} must be one of {sorted(_DTYPES)}, '
                                f'got {kwargs[key]!r}.')
      kwargs[key] = _DTYPES[kwargs[key]]
  known = set(PSPNet.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise errors.InputError(f'Unknown config.model keys {unknown}; PSPNet accepts {sorted(known)}.')
  for key in ('stem_widths', 'pool_scales'):
    if key in kwargs:
      kwargs[key] = tuple(kwargs[key])
  try:
    model = PSPNet(**kwargs)
  except errors.InputError as error:
    raise errors.InputError(str(error).replace('PSPNet ', 'config.model.', 1)) from None
  return model
