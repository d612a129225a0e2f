"""Checkpoint converters: strict key/shape checking, semseg names, .pth reading, the CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mmseg_reference as ref
from psp_jax import build_model, config as base_config
from psp_jax.convert import ConversionError, convert_state_dict, load_torch_checkpoint
from psp_jax.training import checkpoint

DATA = os.path.join(os.path.dirname(__file__), 'semseg_keys')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(depth=18, stem_widths=(4, 4, 8), base_width=4, channels=8, ppm_channels=8,
            aux_channels=4, num_classes=5)
TINY_FLAGS = ['--config.model.depth=18', '--config.model.stem_widths=(4,4,8)',
              '--config.model.base_width=4', '--config.model.channels=8',
              '--config.model.ppm_channels=8', '--config.model.aux_channels=4',
              '--config.model.num_classes=5']


def _tiny_model(**overrides):
  config = base_config.get_model_config()
  config.update(TINY, **overrides)
  return build_model(config)


@pytest.fixture(scope='module')
def tiny_mmseg_state():
  """An mmseg PSPNet-R18 with 4-channel stage 1, as mmseg itself names and shapes it."""
  config = ref.pspnet_config(depth=18, num_classes=5)
  config['backbone'].update(stem_channels=8, base_channels=4)
  config['decode_head'].update(in_channels=32, channels=8)
  config['auxiliary_head'].update(in_channels=16, channels=4)
  return ref.state_dict(ref.build(config))


def test_strict_error_lists_missing_extra_and_misshaped(tiny_mmseg_state):
  state = dict(tiny_mmseg_state)
  del state['backbone.layer2.1.bn2.running_var']
  state['decode_head.extra_conv.weight'] = np.zeros((8, 8, 1, 1), np.float32)
  state['auxiliary_head.conv_seg.weight'] = np.zeros((7, 4, 1, 1), np.float32)
  with pytest.raises(ConversionError) as error:
    convert_state_dict(state, 'mmseg', _tiny_model())
  message = str(error.value)
  assert 'missing in checkpoint (1)' in message
  assert 'backbone/layer2_1/bn2/var' in message
  assert 'unexpected in checkpoint (1)' in message and 'decode_head.extra_conv.weight' in message
  assert 'shape mismatch (1)' in message
  assert 'auxiliary_head.conv_seg.weight: checkpoint (1, 1, 4, 7) vs model (1, 1, 4, 5)' in message


def test_wrong_architecture_is_refused(tiny_mmseg_state):
  with pytest.raises(ConversionError, match='missing in checkpoint'):
    convert_state_dict(tiny_mmseg_state, 'mmseg', _tiny_model(depth=34))
  with pytest.raises(ConversionError, match='unexpected in checkpoint'):
    convert_state_dict(tiny_mmseg_state, 'mmseg', _tiny_model(pool_scales=(1, 2, 3)))
  with pytest.raises(ConversionError, match='shape mismatch'):
    convert_state_dict(tiny_mmseg_state, 'mmseg', _tiny_model(stem_widths=(8, 8, 8)))
  with pytest.raises(ValueError, match='Unknown checkpoint format'):
    convert_state_dict(tiny_mmseg_state, 'detectron', _tiny_model())


def test_conv_and_bn_leaves_land_transposed_and_in_their_collections(tiny_mmseg_state):
  variables = convert_state_dict(tiny_mmseg_state, 'mmseg', _tiny_model())
  kernel = tiny_mmseg_state['backbone.layer3.0.conv1.weight']  # OIHW
  np.testing.assert_array_equal(variables['params']['backbone']['layer3_0']['conv1']['kernel'],
                                kernel.transpose(2, 3, 1, 0))
  bn = variables['batch_stats']['decode_head']['ppm']['branch3']['bn']
  np.testing.assert_array_equal(bn['var'],
                                tiny_mmseg_state['decode_head.psp_modules.3.1.bn.running_var'])
  np.testing.assert_array_equal(
      variables['params']['auxiliary_head']['bottleneck']['bn']['scale'],
      tiny_mmseg_state['auxiliary_head.convs.0.bn.weight'])


def _fixture_state(name, seed=0):
  """Random tensors with the exact names and shapes recorded from hszhao/semseg."""
  rng = np.random.RandomState(seed)
  state = {}
  with open(os.path.join(DATA, name)) as f:
    for line in f:
      if line.startswith('#'):
        continue
      key, _, shape = line.strip().partition(' ')
      state[key] = np.asarray(rng.randn(*[int(s) for s in shape.split(",") if s]), np.float32)
  return state


def _semseg_config(**overrides):
  config = base_config.get_model_config()
  config.update({'stem_widths': (64, 64, 128), 'contract_dilation': False,
                 'align_corners': True, **overrides})
  return config


def test_semseg_pspnet_names_map_completely():
  state = _fixture_state('semseg_pspnet50_voc_keys.txt')
  assert all(k.startswith('module.') for k in state)
  variables = convert_state_dict(state, 'semseg', build_model(_semseg_config(num_classes=21)))
  params, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(params['decode_head']['ppm']['branch2']['conv']['kernel'],
                                state['module.ppm.features.2.1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats['backbone']['stem_bn2']['mean'],
                                state['module.layer0.7.running_mean'])
  np.testing.assert_array_equal(params['decode_head']['conv_seg']['bias'], state['module.cls.4.bias'])
  np.testing.assert_array_equal(params['auxiliary_head']['bottleneck']['conv']['kernel'],
                                state['module.aux.0.weight'].transpose(2, 3, 1, 0))
  with pytest.raises(ConversionError, match='shape mismatch'):  # mmseg's stem widths
    convert_state_dict(state, 'semseg', build_model(_semseg_config(num_classes=21,
                                                                   stem_widths=(32, 32, 64))))


def test_semseg_imagenet_resnet_names_map_completely():
  state = _fixture_state('semseg_resnet50_keys.txt')
  assert 'fc.weight' in state  # the ImageNet classifier is dropped by name, nothing else is
  variables = convert_state_dict(state, 'semseg-resnet', build_model(_semseg_config()))
  assert set(variables['params']) == {'backbone'}
  np.testing.assert_array_equal(variables['params']['backbone']['stem_conv2']['kernel'],
                                state['conv3.weight'].transpose(2, 3, 1, 0))
  state['layer5.0.conv1.weight'] = state['layer4.0.conv1.weight']
  with pytest.raises(ConversionError, match='layer5.0.conv1.weight'):
    convert_state_dict(state, 'semseg-resnet', build_model(_semseg_config()))


def _save_mmseg_release(state, path):
  """The layout mmseg publishes: {'meta': ..., 'state_dict': ...} of torch tensors."""
  torch.save({'meta': {'CLASSES': ('a', 'b', 'c', 'd', 'e'), 'PALETTE': [[0, 0, 0]] * 5},
              'state_dict': {k: torch.from_numpy(v) for k, v in state.items()}}, path)


def test_pth_release_file_loads(tiny_mmseg_state, tmp_path):
  path = tmp_path / 'pspnet.pth'
  _save_mmseg_release(tiny_mmseg_state, path)
  variables = load_torch_checkpoint(path, 'mmseg', _tiny_model())
  expected = convert_state_dict(tiny_mmseg_state, 'mmseg', _tiny_model())
  np.testing.assert_array_equal(variables['params']['decode_head']['conv_seg']['kernel'],
                                expected['params']['decode_head']['conv_seg']['kernel'])


def test_cli_writes_an_orbax_checkpoint(tiny_mmseg_state, tmp_path):
  source, out = tmp_path / 'pspnet.pth', tmp_path / 'converted'
  _save_mmseg_release(tiny_mmseg_state, source)
  subprocess.run([sys.executable, '-m', 'psp_jax.convert', '--format=mmseg', str(source),
                  f'--config={ROOT}/configs/ade20k.py', f'--out={out}', *TINY_FLAGS],
                 check=True, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  restored = checkpoint.load_variables(out)
  expected = convert_state_dict(tiny_mmseg_state, 'mmseg', _tiny_model())
  for collection in ('params', 'batch_stats'):
    np.testing.assert_array_equal(
        restored[collection]['backbone']['layer4_1']['bn2']['scale' if collection == 'params'
                                                              else 'var'],
        expected[collection]['backbone']['layer4_1']['bn2']['scale' if collection == 'params'
                                                              else 'var'])
  failed = subprocess.run([sys.executable, '-m', 'psp_jax.convert', '--format=semseg',
                           str(source), f'--config={ROOT}/configs/ade20k.py',
                           f'--out={tmp_path / "x"}', *TINY_FLAGS],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert failed.returncode == 2 and 'Traceback' not in failed.stderr
  assert failed.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'semseg checkpoint does not match' in failed.stderr
  assert not (tmp_path / 'x').exists()
