"""Numerical parity with mmsegmentation 1.2.2's own PSPNet and ResNets, in float32 on CPU.

Each reference is built by mmseg with random weights and random BN statistics,
converted with psp_jax.convert, and run in eval mode on the same input.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import mmseg_reference as ref
from psp_jax import build_model, config as base_config
from psp_jax.convert import convert_state_dict
from psp_jax.models import kernels as kernel_lib
from psp_jax.models.pspnet import module_defs
from psp_jax.models.resnet import DilatedResNet
from psp_jax.training import losses

RTOL = 1e-4  # max |ours - ref| <= RTOL * max |ref|
# Per parameter, float64 end to end. Eval-mode BN agrees to ~1e-15; training-mode BN over
# these few pixels (the 1x1 bin sees 2 values per channel) leaves up to ~5e-8: the same
# sums rounded by PyTorch's BatchNorm formula and by autodiff, amplified by the batch
# statistics' conditioning. tests/parity/test_mmseg_training.py checks training at n >= 4.
GRAD_RTOL = 1e-6


def _assert_close(ours, reference, name):
  ours, reference = np.asarray(ours), np.asarray(reference)
  assert ours.shape == reference.shape, name
  error, scale = np.abs(ours - reference).max(), np.abs(reference).max()
  assert scale > 0.1, f'{name}: reference is degenerate (max {scale})'
  assert error <= RTOL * scale, f'{name}: max abs diff {error} > {RTOL} * {scale}'


def _model_config(depth):
  config = base_config.get_model_config()
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


@pytest.mark.parametrize('kernels', ['auto', 'xla'])
@pytest.mark.parametrize('size', [(97, 129), (128, 128)], ids=['97x129', '128x128'])
def test_pspnet_logits_match_mmseg(converted, size, kernels):
  reference, model, variables = converted
  model = model.clone(kernels=kernels)
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
      *module_defs(train=False), depth=model_config.depth, stem=model_config.stem, stem_widths=model_config.stem_widths,
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


# Plain-XLA gradients on R18 only: R50 would add suite time and no operation R18 lacks.
@pytest.mark.parametrize('converted, kernels', [(50, 'auto'), (18, 'auto'), (18, 'xla')],
                         ids=['r50-auto', 'r18-auto', 'r18-xla'], indirect=['converted'])
@pytest.mark.parametrize('train', [False, True], ids=['eval_bn', 'train_bn'])
def test_gradients_match_mmseg_in_float64(converted, train, kernels):
  """Backward parity: d(main + 0.4 aux loss)/d(every parameter) against PyTorch autograd.

  Covers the CPU convolution rewrites' gradients (kernel gradients as dots, Winograd
  input gradients) on the real network, in float64 on both sides: float32 gradients of
  this random network are not reproducible to better than a few percent even by PyTorch
  against itself in float64. Dropout is off on both sides (different generators).
  """
  reference, _, _ = converted
  rng = np.random.RandomState(5)
  images = rng.randn(2, 65, 81, 3)
  labels = rng.randint(0, 150, (2, 65, 81)).astype(np.int32)
  labels[:, :9] = 255
  expected_loss, torch_grads = ref.reference_gradients(reference, images, labels, torch.float64,
                                                       train=train)
  state = ref.state_dict(reference)
  grads = {**state, **torch_grads}

  with jax.enable_x64(True):
    model = build_model(_model_config(reference.backbone.depth)).clone(
        dtype=jnp.float64, param_dtype=jnp.float64, dropout_rate=0.0, kernels=kernels)
    variables = convert_state_dict(state, 'mmseg', model)
    expected = convert_state_dict(grads, 'mmseg', model)['params']

    def loss_fn(params):
      outputs = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                            images, train=train, mutable=['batch_stats'])[0]
      return losses.segmentation_loss(
          outputs, labels, cross_entropy_sums=kernel_lib.get(kernels).cross_entropy_sums)[0]

    value, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  np.testing.assert_allclose(value, expected_loss, rtol=1e-12)
  ours = flax.traverse_util.flatten_dict(grads, sep='/')
  expected = flax.traverse_util.flatten_dict(expected, sep='/')
  assert ours.keys() == expected.keys()
  worst = max((np.abs(ours[k] - v).max() / np.abs(v).max(), k) for k, v in expected.items()
              if np.abs(v).max() > 0)
  assert worst[0] <= GRAD_RTOL, worst
