"""mmsegmentation 1.2.2's own PSPNet, built on CPU, as the numerical reference (tests, benchmarks).

Needs the test extra (torch, mmsegmentation, mmengine, mmcv-lite): `pip install -e ".[test]"`.

mmcv-lite ships no compiled ops, yet `mmseg.models` imports a few names from
`mmcv.ops` at import time. PSPNet uses none of them, so a stand-in module gives
`point_sample` (pure PyTorch, as mmcv's) and makes every other op fail loudly if called.
"""

import sys
import types

import numpy as np


def _install_mmcv_ops_stand_in():
  if 'mmcv.ops' in sys.modules:
    return
  import torch.nn.functional as F

  ops = types.ModuleType('mmcv.ops')

  def point_sample(input, points, align_corners=False, **kwargs):  # pylint: disable=redefined-builtin
    add_dim = points.dim() == 3
    if add_dim:
      points = points.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output

  def missing(name):
    if name.startswith('__'):
      raise AttributeError(name)

    def op(*args, **kwargs):
      raise NotImplementedError(f'mmcv.ops.{name} is compiled and absent from mmcv-lite.')
    return op

  ops.point_sample = point_sample
  ops.__getattr__ = missing
  sys.modules['mmcv.ops'] = ops


def pspnet_config(depth: int = 50, num_classes: int = 150, dropout_ratio: float = 0.1) -> dict:
  """mmseg's configs/_base_/models/pspnet_r50-d8.py with plain BN (and the r18-d8 widths);
  `dropout_ratio` of both heads (0 to compare gradients with another framework's)."""
  wide = depth >= 50
  norm_cfg = dict(type='BN', requires_grad=True)
  return dict(
      type='EncoderDecoder',
      backbone=dict(type='ResNetV1c', depth=depth, num_stages=4, out_indices=(0, 1, 2, 3),
                    dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=norm_cfg,
                    norm_eval=False, style='pytorch', contract_dilation=True),
      decode_head=dict(type='PSPHead', in_channels=2048 if wide else 512, in_index=3,
                       channels=512 if wide else 128, pool_scales=(1, 2, 3, 6),
                       dropout_ratio=dropout_ratio, num_classes=num_classes, norm_cfg=norm_cfg,
                       align_corners=False,
                       loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                        loss_weight=1.0)),
      auxiliary_head=dict(type='FCNHead', in_channels=1024 if wide else 256, in_index=2,
                          channels=256 if wide else 64, num_convs=1, concat_input=False,
                          dropout_ratio=dropout_ratio, num_classes=num_classes, norm_cfg=norm_cfg,
                          align_corners=False,
                          loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                           loss_weight=0.4)),
      train_cfg=dict(), test_cfg=dict(mode='whole'))


def randomize_(model, seed: int = 0):
  """Random weights AND random BN statistics, in place; returns the model in eval mode.

  mmseg zero-initialises every residual `bn3`/`bn2` gamma, and fresh running stats
  are 0/1, either of which would hide a wrong mapping; so everything is randomised.
  """
  import torch
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if 'num_batches_tracked' in name:
        continue
      if name.endswith('running_var'):
        new = torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5
      elif name.endswith('running_mean'):
        new = torch.rand(tensor.shape, generator=generator) - 0.5
      elif tensor.dim() == 1:  # BN gamma / beta and conv biases
        low, high = (-0.5, 1.0) if name.endswith('weight') else (-0.2, 0.2)
        new = torch.rand(tensor.shape, generator=generator) * (high - low) + low
      else:  # conv kernels, scaled so activations neither vanish nor explode
        new = torch.randn(tensor.shape, generator=generator) * np.sqrt(2.0 / tensor[0].numel())
      tensor.copy_(new)
  model.eval()  # mmseg's ResNet.train() returns None, so no chaining
  return model


def build(config: dict, seed: int = 0):
  """Any mmseg model or backbone from its config dict, randomised (see randomize_)."""
  _install_mmcv_ops_stand_in()
  import mmseg.models  # noqa: F401  (registers the modules)
  from mmseg.registry import MODELS
  return randomize_(MODELS.build(config), seed)


def build_pspnet(depth: int = 50, num_classes: int = 150, seed: int = 0):
  """mmseg's PSPNet, randomised, in eval mode."""
  return build(pspnet_config(depth, num_classes), seed)


def state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in model.state_dict().items()}


def _nchw(images_nhwc: np.ndarray):
  import torch
  return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def reference_logits(model, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
  """mmseg decode and aux logits at the backbone's resolution, NHWC."""
  import torch
  with torch.no_grad():
    feats = model.extract_feat(_nchw(images_nhwc))
    out = {'logits': model.decode_head(feats), 'aux_logits': model.auxiliary_head(feats)}
  return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}


def reference_features(backbone, images_nhwc: np.ndarray) -> list[np.ndarray]:
  """The four stage outputs of an mmseg backbone, NHWC."""
  import torch
  with torch.no_grad():
    feats = backbone(_nchw(images_nhwc))
  return [f.numpy().transpose(0, 2, 3, 1) for f in feats]


def reference_gradients(model, images_nhwc: np.ndarray, labels: np.ndarray, dtype,
                        train: bool = True, average: str = 'valid',
                        autocast: bool = False) -> tuple[float, dict]:
  """mmseg's d(CE(main) + 0.4 CE(aux))/d(parameter) on a copy of `model` in `dtype`.

  The logits are upsampled as mmseg's heads do (bilinear, align_corners=False), ignore
  label 255, the mean over labelled pixels ('valid') or all pixels ('all'); dropout off.
  `autocast`: the forward under torch.autocast('cpu', bfloat16) (convolutions in
  bfloat16, BatchNorm statistics and the loss in float32), the model in float32.
  Returns (loss, {parameter name: float64 gradient}).
  """
  import copy  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  model = copy.deepcopy(model).to(dtype).train(train)
  heads = ((model.decode_head, 1.0), (model.auxiliary_head, 0.4))
  target = torch.from_numpy(labels).long()
  loss = 0
  with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
    feats = model.extract_feat(_nchw(images_nhwc).to(dtype))
    for head, weight in heads:
      head.dropout = None
      logits = F.interpolate(head(feats), labels.shape[1:], mode='bilinear', align_corners=False)
      total = F.cross_entropy(logits.to(dtype), target, ignore_index=255, reduction='sum')
      loss = loss + weight * total / ((target != 255).sum() if average == 'valid'
                                      else target.numel())
  loss.backward()
  return loss.item(), {k: p.grad.double().numpy() for k, p in model.named_parameters()}
