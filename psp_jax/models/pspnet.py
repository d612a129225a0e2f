"""PSPNet: dilated ResNet + pyramid pooling head + auxiliary FCN head (Zhao et al., 2017).

Module and parameter names follow mmsegmentation's concepts (backbone, decode_head,
auxiliary_head, conv_seg) so converted checkpoints read naturally. The operations a
mode of psp_jax.kernels rewrites for speed come in as `ops`; the parameters are the same.
"""

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from psp_jax import errors, kernels as kernel_lib
from psp_jax.models.batch_norm import BatchNorm
from psp_jax.models import resnet
from psp_jax.models.resnet import DilatedResNet, ModuleDef, conv_init

# mmseg's decode heads initialise the classifier with N(0, 0.01) and a zero bias.
classifier_init = nn.initializers.normal(0.01)


def module_defs(train: bool, bn_axis_name: str | None = None, dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32,
                ops: kernel_lib.Kernels = kernel_lib.Kernels(),
                bn_momentum: float = 0.1) -> tuple[ModuleDef, ModuleDef]:
  """(conv, norm): the nn.Conv and BatchNorm definitions every layer of the model uses.

  Convolutions have no bias (each is followed by BN) and torchvision's initialisation;
  BatchNorm is PyTorch's BatchNorm2d (eps 1e-5, momentum `bn_momentum`, PyTorch's
  convention: 0.1 as BatchNorm2d, 0.001 as CSAIL's SynchronizedBatchNorm2d), synchronised
  over the pmap axis `bn_axis_name` when set.
  """
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype,
                           param_dtype=param_dtype, conv_general_dilated=ops.conv_general_dilated)
  norm = functools.partial(BatchNorm, use_running_average=not train, momentum=bn_momentum,
                           epsilon=1e-5, axis_name=bn_axis_name, dtype=dtype,
                           param_dtype=param_dtype)
  return conv, norm


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
  bins: Sequence[int]
  conv: ModuleDef
  norm: ModuleDef
  channels: int | None = None
  align_corners: bool = False
  ops: kernel_lib.Kernels = kernel_lib.Kernels()

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """x: [B, h, w, C] -> [B, h, w, C + len(bins) * channels]."""
    upsampled = [self.ops.resize_bilinear(y, x.shape[1:3], self.align_corners)
                 for y in self.branches(x)]
    return jnp.concatenate([x] + upsampled, axis=-1)

  @nn.compact
  def branches(self, x: jnp.ndarray) -> list[jnp.ndarray]:
    """x: [B, h, w, C] -> the branches before upsampling, [B, n, n, channels] per bin."""
    channels = self.channels or x.shape[-1] // len(self.bins)
    return [ConvBNReLU(channels, 1, self.conv, self.norm, name=f'branch{i}')(pooled)
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
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """x: [B, h, w, C] -> logits [B, h, w, num_classes]."""
    if self.bins:
      ppm = PyramidPooling(self.bins, self.conv, self.norm, self.ppm_channels,
                           self.align_corners, self.ops, name='ppm')
      if self.ops.pyramid_bottleneck:  # the same parameters, without the concatenation
        x = self.ops.pyramid_bottleneck(self.channels, self.conv, self.norm, self.align_corners,
                                        name='bottleneck')(x, ppm.branches(x))
      else:
        x = ConvBNReLU(self.channels, 3, self.conv, self.norm, name='bottleneck')(ppm(x))
    else:
      x = ConvBNReLU(self.channels, 3, self.conv, self.norm, name='bottleneck')(x)
    # nn.Dropout2d: whole channels are dropped, so the mask broadcasts over H and W.
    x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
    return self.conv(self.num_classes, (1, 1), use_bias=True, kernel_init=classifier_init,
                     name='conv_seg')(x)


class PSPNet(nn.Module):
  """PSPNet for semantic segmentation, a pure function of (variables, images).

  `model.apply(variables, images, train=False)` returns
  `{'logits': [B, h, w, K], 'aux_logits': [B, h', w', K]}` (float32, or float64 in
  float64) at the backbone's output stride (1/8 by default);
  `model.apply(variables, images, method='segment')` gives eval logits at the input size.
  Training needs `rngs={'dropout': key}` and `mutable=['batch_stats']`.

  Attributes mirror mmsegmentation's `pspnet_r50-d8` config names; `kernels` chooses
  the speed rewrites of psp_jax.kernels ('auto', 'xla' or 'cpu').
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

  @property
  def ops(self) -> kernel_lib.Kernels:
    return kernel_lib.get(self.kernels)

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
    """images: [B, H, W, 3] normalised (ImageNet mean/std)."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise errors.InputError(f'images must be [B, H, W, 3] (NHWC), got shape {images.shape}.')
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
    outputs = {'logits': head(self.channels, bins=tuple(self.pool_scales),
                              ppm_channels=self.ppm_channels, name='decode_head')(
                                  features[3], train)}
    if self.aux_in_index is not None:
      outputs['aux_logits'] = head(self.aux_channels, name='auxiliary_head')(
          features[self.aux_in_index], train)
    logits_dtype = jnp.promote_types(self.dtype, jnp.float32)
    return {key: value.astype(logits_dtype) for key, value in outputs.items()}

  def upsample(self, logits: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
    """[B, h, w, K] -> [B, H, W, K]: bilinear, as F.interpolate with the model's align_corners."""
    return self.ops.resize_bilinear(logits, tuple(size), self.align_corners)

  def segment(self, images: jnp.ndarray) -> jnp.ndarray:
    """Eval-mode logits upsampled to the input size: [B, H, W, 3] -> [B, H, W, K]."""
    return self.upsample(self(images, train=False)['logits'], images.shape[1:3])


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
  model = PSPNet(**kwargs)
  # A bad value fails here, in the caller's first seconds, not when the model is traced.
  kernel_lib.resolve(model.kernels)
  resnet.stage_strides_and_dilations(model.output_stride)
  resnet.stage_sizes(model.depth)
  if model.num_classes < 1:
    raise errors.InputError(f'config.model.num_classes={model.num_classes}: give at least 1.')
  return model
