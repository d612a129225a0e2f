"""Dilated ResNet backbones (NHWC) with mmsegmentation and hszhao/semseg layouts.

Strides and paddings are explicit and symmetric, as PyTorch's, so feature maps
have PyTorch's sizes on any input (including sizes that are not multiples of 8).
`conv` and `norm` are module definitions (functools.partial of nn.Conv and BatchNorm)
passed in by the model, as in flax's examples/imagenet.
"""

import functools
import numbers
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from psp_jax.base import errors
from psp_jax.models import resample
from psp_jax.models.batch_norm import BatchNorm

ModuleDef = Any


# torchvision/mmcv ResNet initialisation: kaiming normal, fan_out, for ReLU.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def module_defs(train: bool, bn_axis_name: str | None = None, dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32, ops: Any = None,
                bn_momentum: float = 0.1) -> tuple[ModuleDef, ModuleDef]:
  """(conv, norm): the nn.Conv and BatchNorm definitions every layer of the model uses.

  Convolutions have no bias (each is followed by BN) and torchvision's initialisation;
  BatchNorm is PyTorch's BatchNorm2d (eps 1e-5, momentum `bn_momentum`, PyTorch's
  convention: 0.1 as BatchNorm2d, 0.001 as CSAIL's SynchronizedBatchNorm2d), synchronised
  over the pmap axis `bn_axis_name` when set. `ops`: a psp_jax.models.kernels.Kernels whose
  convolution lowering nn.Conv calls; None for lax's own.
  """
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype,
                           param_dtype=param_dtype,
                           conv_general_dilated=(ops.conv_general_dilated if ops
                                                 else jax.lax.conv_general_dilated))
  norm = functools.partial(BatchNorm, use_running_average=not train, momentum=bn_momentum,
                           epsilon=1e-5, axis_name=bn_axis_name, dtype=dtype,
                           param_dtype=param_dtype)
  return conv, norm


def default_layers(conv: ModuleDef | None, norm: ModuleDef | None,
                   train: bool) -> tuple[ModuleDef, ModuleDef]:
  """`conv` and `norm`, each `module_defs(train)`'s where not given (modules built alone)."""
  default_conv, default_norm = module_defs(train)
  return conv or default_conv, norm or default_norm


STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def stage_sizes(depth: int) -> tuple[int, ...]:
  """Blocks per stage of the ResNet of `depth`."""
  if depth not in STAGE_SIZES:
    raise errors.InputError(f'depth={depth}: use one of {sorted(STAGE_SIZES)}.')
  return STAGE_SIZES[depth]


def stage_strides_and_dilations(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Per-stage (strides, dilations) for an output stride of 8, 16 or 32.

  Stages past the wanted stride trade their stride for dilation, as DeepLab and
  PSPNet do: OS8 is strides (1, 2, 1, 1) with dilations (1, 1, 2, 4).
  """
  plans = {
      8: ((1, 2, 1, 1), (1, 1, 2, 4)),
      16: ((1, 2, 2, 1), (1, 1, 1, 2)),
      32: ((1, 2, 2, 2), (1, 1, 1, 1)),
  }
  if output_stride not in plans:
    raise errors.InputError(f'output_stride={output_stride}: use 8, 16 or 32.')
  return plans[output_stride]


def check_backbone(depth: int, stem: str, stem_widths: Sequence[int], output_stride: int,
                   base_width: int) -> None:
  """Raises errors.InputError, as 'field=value: what is allowed', for a backbone that
  cannot be built (DilatedResNet's and PSPNet's constructors)."""
  stage_sizes(depth)
  stage_strides_and_dilations(output_stride)
  if stem not in ('deep', 'classic'):
    raise errors.InputError(f"stem={stem!r}: use 'deep' or 'classic'.")
  widths = tuple(stem_widths)
  if (len(widths) != 3 if stem == 'deep' else not widths) or not all(
      isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths):
    raise errors.InputError(
        f'stem_widths={widths}: the deep stem takes three channel counts >= 1, (32, 32, 64) '
        'as mmseg or (64, 64, 128) as semseg; the classic one uses the last, (64,).')
  if not isinstance(base_width, numbers.Integral) or isinstance(base_width, bool) or (
      base_width < 1):
    raise errors.InputError(f'base_width={base_width!r}: give a whole number >= 1 (64 in '
                            'every standard ResNet).')


def block_dilations(num_blocks: int, dilation: int, contract_dilation: bool) -> list[int]:
  """Dilation of each block's 3x3 conv in one stage.

  mmsegmentation's `contract_dilation` gives the first block of a dilated stage
  half the dilation (it is the block that would have downsampled); semseg does not.
  """
  first = dilation // 2 if (contract_dilation and dilation > 1) else dilation
  return [first] + [dilation] * (num_blocks - 1)


def _pad(dilation: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((dilation, dilation), (dilation, dilation))


class BasicBlock(nn.Module):
  """ResNet-18/34 block: `dilation` on conv1, `conv2_dilation` on conv2.

  mmsegmentation dilates conv1 only (conv2_dilation 1); CSAIL's ResnetDilated dilates
  every 3x3 of the stage, conv2 at the stage's full dilation even where conv1 is contracted.
  """
  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1
  conv2_dilation: int = 1
  downsample: bool = False
  keep: Callable | None = None  # psp_jax.models.kernels' residual-stream identity, or none
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), self.strides, padding=_pad(self.dilation),
                  kernel_dilation=self.dilation, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), padding=_pad(self.conv2_dilation),
                  kernel_dilation=self.conv2_dilation, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if self.downsample:
      residual = self.conv(self.features, (1, 1), self.strides, padding='VALID',
                           name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual)
    y = nn.relu(y + residual)
    return self.keep(y) if self.keep else y


class Bottleneck(nn.Module):
  """ResNet-50/101/152 block, stride and dilation on the 3x3 conv (torchvision "v1.5")."""
  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1
  downsample: bool = False
  keep: Callable | None = None
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (1, 1), padding='VALID', name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), self.strides, padding=_pad(self.dilation),
                  kernel_dilation=self.dilation, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.features * 4, (1, 1), padding='VALID', name='conv3')(y)
    y = self.norm(name='bn3')(y)
    if self.downsample:
      residual = self.conv(self.features * 4, (1, 1), self.strides, padding='VALID',
                           name='downsample_conv')(x)
      residual = self.norm(name='downsample_bn')(residual)
    y = nn.relu(y + residual)
    return self.keep(y) if self.keep else y


class DilatedResNet(nn.Module):
  """ResNet backbone returning the four stage features.

  Attributes:
    depth: 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck).
    stem: 'deep' (three 3x3 convs, mmseg ResNetV1c / semseg) or 'classic' (7x7, torchvision).
    stem_widths: output channels of the three deep-stem convs: (32, 32, 64) mmseg,
      (64, 64, 128) semseg. The classic stem uses only the last.
    output_stride: 8, 16 or 32.
    contract_dilation: halve the first block's dilation in dilated stages (mmseg: True).
    dilate_basic_conv2: ResNet-18/34 only: dilate each BasicBlock's conv2 at the stage's
      dilation as well (CSAIL's ResnetDilated); mmseg leaves it at 1.
    base_width: channels of the first stage's 3x3 convs (64 in every standard ResNet).
    remat: rematerialise each block in the backward pass (saves activation memory).
    conv, norm: nn.Conv and BatchNorm module definitions (dtype, train mode, sync axis);
      None: `module_defs(train)`, float32 convolutions without bias and PyTorch's
      BatchNorm2d, unsynchronised.
    train: BatchNorm's mode when `norm` is None (batch statistics, running averages kept
      in 'batch_stats'); a given `norm` carries its own.
    max_pool, keep: the stem's max pool and the residual-stream identity (psp_jax.models.kernels).
  """
  conv: ModuleDef | None = None
  norm: ModuleDef | None = None
  max_pool: Callable = resample.max_pool
  keep: Callable | None = None
  depth: int = 50
  stem: str = 'deep'
  stem_widths: Sequence[int] = (32, 32, 64)
  output_stride: int = 8
  contract_dilation: bool = True
  dilate_basic_conv2: bool = False
  base_width: int = 64
  remat: bool = False
  train: bool = False

  def __post_init__(self):
    try:
      check_backbone(self.depth, self.stem, self.stem_widths, self.output_stride,
                     self.base_width)
    except errors.InputError as error:
      raise errors.InputError(f'DilatedResNet {error}') from None
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
    """Args: x: [B, H, W, 3] normalised images. Returns the outputs of stages 1-4,
    [B, ~H/4, ~W/4, C1] ... [B, ~H/s, ~W/s, C4] for output stride s."""
    sizes = stage_sizes(self.depth)
    conv, norm = default_layers(self.conv, self.norm, self.train)

    if self.stem == 'deep':
      for i, (width, stride) in enumerate(zip(self.stem_widths, (2, 1, 1))):
        x = conv(width, (3, 3), stride, padding=_pad(1), name=f'stem_conv{i}')(x)
        x = nn.relu(norm(name=f'stem_bn{i}')(x))
    else:
      x = conv(self.stem_widths[-1], (7, 7), 2, padding=((3, 3), (3, 3)), name='stem_conv0')(x)
      x = nn.relu(norm(name='stem_bn0')(x))
    x = self.max_pool(x, 3, 2, 1)

    block_cls = BasicBlock if self.depth < 50 else Bottleneck
    expansion = block_cls.expansion
    basic = block_cls is BasicBlock
    if self.remat:
      block_cls = nn.remat(block_cls)
    strides, dilations = stage_strides_and_dilations(self.output_stride)
    in_channels = self.stem_widths[-1]
    features = []
    for stage, num_blocks in enumerate(sizes):
      width = self.base_width * 2**stage
      out_channels = width * expansion
      for j, dilation in enumerate(block_dilations(num_blocks, dilations[stage],
                                                   self.contract_dilation)):
        stride = strides[stage] if j == 0 else 1
        extra = {'conv2_dilation': dilations[stage]} if basic and self.dilate_basic_conv2 else {}
        x = block_cls(width, conv=conv, norm=norm, strides=stride, dilation=dilation,
                      downsample=(j == 0 and (stride != 1 or in_channels != out_channels)),
                      keep=self.keep, name=f'layer{stage + 1}_{j}', **extra)(x)
        in_channels = out_channels
      features.append(x)
    return features
