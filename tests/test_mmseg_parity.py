"""Numerical parity with mmsegmentation 1.2.2's own PSPNet and ResNets, in float32 on CPU.

Each reference is built by mmseg with random weights and random BN statistics,
converted with psp_jax.convert, and run in eval mode on the same input.
"""

import jax
import numpy as np
import pytest

import mmseg_reference as ref
from configs import ade20k
from psp_jax import build_model
from psp_jax.convert import convert_state_dict
from psp_jax.models.resnet import DilatedResNet

RTOL = 1e-4  # max |ours - ref| <= RTOL * max |ref|


def _assert_close(ours, reference, name):
  ours, reference = np.asarray(ours), np.asarray(reference)
  assert ours.shape == reference.shape, name
  error, scale = np.abs(ours - reference).max(), np.abs(reference).max()
  assert scale > 0.1, f'{name}: reference is degenerate (max {scale})'
  assert error <= RTOL * scale, f'{name}: max abs diff {error} > {RTOL} * {scale}'


def _model_config(depth):
  config = ade20k.get_model_config()
  if depth < 50:  # mmseg pspnet_r18-d8: heads 4x narrower
    config.update(depth=depth, channels=128, ppm_channels=128, aux_channels=64)
  return config


@pytest.fixture(scope='module', params=[50, 18], ids=['r50', 'r18'])
def converted(request):
  depth = request.param
  reference = ref.build_pspnet(depth=depth, num_classes=150, seed=depth)
  model = build_model(_model_config(depth))
  variables = convert_state_dict(ref.state_dict(reference), 'mmseg', model)
  return reference, model, variables


@pytest.mark.parametrize('size', [(97, 129), (128, 128)], ids=['97x129', '128x128'])
def test_pspnet_logits_match_mmseg(converted, size):
  reference, model, variables = converted
  images = np.random.RandomState(size[0]).randn(2, *size, 3).astype(np.float32)
  expected = ref.reference_logits(reference, images)
  outputs = jax.jit(model.apply)(variables, images)
  for name in ('logits', 'aux_logits'):
    _assert_close(outputs[name], expected[name], name)


def test_parity_check_can_fail(converted):
  """Negative control: semseg's align_corners=True must NOT pass as mmseg's False."""
  reference, model, variables = converted
  images = np.random.RandomState(0).randn(1, 97, 129, 3).astype(np.float32)
  expected = ref.reference_logits(reference, images)['logits']
  wrong = jax.jit(model.clone(align_corners=True).apply)(variables, images)['logits']
  with pytest.raises(AssertionError, match='max abs diff'):
    _assert_close(wrong, expected, 'logits')


def _backbone_parity(mmseg_backbone_config, fmt, extra_keys, prefix, model_config, size):
  reference = ref.build(mmseg_backbone_config, seed=3)
  state = {prefix + k: v for k, v in ref.state_dict(reference).items()}
  state.update(extra_keys)
  variables = convert_state_dict(state, fmt, build_model(model_config))
  assert set(variables['params']) == {'backbone'}
  backbone = DilatedResNet(
      depth=model_config.depth, stem=model_config.stem, stem_widths=model_config.stem_widths,
      output_stride=model_config.output_stride,
      contract_dilation=model_config.contract_dilation)
  images = np.random.RandomState(1).randn(1, *size, 3).astype(np.float32)
  features = jax.jit(backbone.apply)(
      {'params': variables['params']['backbone'],
       'batch_stats': variables['batch_stats']['backbone']}, images)
  for i, (ours, theirs) in enumerate(zip(features, ref.reference_features(reference, images))):
    _assert_close(ours, theirs, f'stage {i + 1}')


def test_mmcv_resnet_v1c_backbone_matches():
  """open-mmlab://resnet18_v1c layout (mmcls-style 'backbone.' prefix and ImageNet head),
  at output stride 16 without contracted dilation."""
  config = _model_config(18)
  config.update(output_stride=16, contract_dilation=False)
  head = {'head.fc.weight': np.zeros((1000, 512), np.float32),
          'head.fc.bias': np.zeros((1000,), np.float32)}
  mmseg_config = dict(type='ResNetV1c', depth=18, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
                      contract_dilation=False, norm_eval=False)
  _backbone_parity(mmseg_config, 'mmcv-resnet', head, 'backbone.', config, (65, 81))


def test_torchvision_backbone_matches():
  """torchvision ResNet-50 layout (7x7 stem, `fc`), dilated to output stride 8."""
  config = _model_config(50)
  config.update(stem='classic', stem_widths=(64,), contract_dilation=False)
  fc = {'fc.weight': np.zeros((1000, 2048), np.float32), 'fc.bias': np.zeros((1000,), np.float32)}
  mmseg_config = dict(type='ResNet', depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                      contract_dilation=False, norm_eval=False)
  _backbone_parity(mmseg_config, 'torchvision', fc, '', config, (57, 57))
