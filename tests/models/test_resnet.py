"""Backbone geometry: output strides, dilation patterns, block layout."""

import jax
import jax.numpy as jnp
import pytest

from psp_jax.models import pspnet, resnet


def _tiny(**kwargs):
  return resnet.DilatedResNet(*pspnet.module_defs(train=False), stem_widths=(4, 4, 8),
                              base_width=4, **kwargs)


def _conv_size(size, stride):
  return (size + 2 - 3) // stride + 1  # 3x3 conv or max pool, padding 1


@pytest.mark.parametrize('output_stride', [8, 16, 32])
@pytest.mark.parametrize('depth', [18, 50])
def test_output_stride_gives_pytorch_feature_sizes(output_stride, depth):
  h, w = 97, 129  # not multiples of 8: PyTorch's symmetric padding rounds up
  model = _tiny(depth=depth, output_stride=output_stride)
  features = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                            jnp.zeros((2, h, w, 3)))
  strides, _ = resnet.stage_strides_and_dilations(output_stride)
  h, w = _conv_size(_conv_size(h, 2), 2), _conv_size(_conv_size(w, 2), 2)  # stem + max pool
  expansion = 4 if depth >= 50 else 1
  for stage, (feature, stride) in enumerate(zip(features, strides)):
    h, w = _conv_size(h, stride), _conv_size(w, stride)
    assert feature.shape == (2, h, w, 4 * 2**stage * expansion)
  assert {8: (13, 17), 16: (7, 9), 32: (4, 5)}[output_stride] == (h, w)


def test_stage_plans():
  assert resnet.stage_strides_and_dilations(8) == ((1, 2, 1, 1), (1, 1, 2, 4))
  assert resnet.stage_strides_and_dilations(16) == ((1, 2, 2, 1), (1, 1, 1, 2))
  assert resnet.stage_strides_and_dilations(32) == ((1, 2, 2, 2), (1, 1, 1, 1))
  with pytest.raises(ValueError, match='output_stride'):
    resnet.stage_strides_and_dilations(4)


def test_dilation_pattern_with_and_without_contraction():
  # mmseg contract_dilation: the first block of a dilated stage uses half the dilation.
  assert resnet.block_dilations(6, 2, contract_dilation=True) == [1, 2, 2, 2, 2, 2]
  assert resnet.block_dilations(3, 4, contract_dilation=True) == [2, 4, 4]
  # semseg: every block of the stage is dilated alike.
  assert resnet.block_dilations(6, 2, contract_dilation=False) == [2] * 6
  assert resnet.block_dilations(3, 4, contract_dilation=False) == [4] * 3
  assert resnet.block_dilations(4, 1, contract_dilation=True) == [1] * 4


@pytest.mark.parametrize('depth,blocks', [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3)),
                                          (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))])
def test_block_layout(depth, blocks):
  model = _tiny(depth=depth, stem='classic')
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  names = variables['params'].keys()
  for stage, count in enumerate(blocks):
    assert sum(n.startswith(f'layer{stage + 1}_') for n in names) == count
  assert 'stem_conv0' in names and 'stem_conv1' not in names
  assert variables['params']['stem_conv0']['kernel'].shape == (7, 7, 3, 8)


def test_bad_depth_and_stem_are_rejected():
  with pytest.raises(ValueError, match='depth'):
    _tiny(depth=42).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='stem'):
    _tiny(stem='wide').init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
