"""Parity with CSAIL's mit_semseg 1.0.0: its resnet*dilated + ppm_deepsup, loss and test protocol.

mit_semseg builds each encoder and decoder, with random weights and random BN statistics;
the two state dicts go through .pth files and `--format=csail`, and both models run in
eval mode on the same input. The logits compared are the pre-softmax outputs of their
`conv_last` and `conv_last_deepsup`, taken by forward hooks inside their own forward
(their decoder returns log_softmax, also compared). Needs `pip install --no-deps
mit-semseg==1.0.0` (README: its declared torchvision/opencv are not needed).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from mit_semseg.models import ModelBuilder, models as csail_models, resnet as csail_resnet
from PIL import Image

from configs import ade20k_csail
from psp_jax import build_model
from psp_jax.base import errors
from psp_jax.evaluation import inference
from psp_jax.training import checkpoint, losses
import mmseg_reference as ref
from psp_jax.convert import ConversionError, convert_state_dict, load_torch_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RTOL = 1e-4  # max |ours - ref| <= RTOL * max |ref|
SHARPEN = 30.0


def _assert_close(ours, reference, name):
  ours, reference = np.asarray(ours), np.asarray(reference)
  assert ours.shape == reference.shape, f'{name}: {ours.shape} vs {reference.shape}'
  error, scale = np.abs(ours - reference).max(), np.abs(reference).max()
  assert scale > 0.1, f'{name}: reference is degenerate (max {scale})'
  assert error <= RTOL * scale, f'{name}: max abs diff {error} > {RTOL} * {scale}'


def _model_config(depth):
  config = ade20k_csail.get_config().model
  # The architecture is what is tested here; psp_jax.models.kernels' CPU rewrites are tested
  # against the plain operations in test_kernels.py (and compile 3x slower).
  config.update(depth=depth, kernels='xla')
  if depth < 50:
    config.aux_channels = 128  # fc_dim 512: cbr_deepsup 256 -> 128
  return config


def _csail_reference(depth, directory):
  """mit_semseg's encoder and decoder, randomised, in eval mode, and their .pth files."""
  fc_dim = 2048 if depth >= 50 else 512
  # build_encoder downloads ImageNet weights unless given a file: give it random ones.
  random_encoder = ref.randomize_(
      csail_models.ResnetDilated(csail_resnet.__dict__[f'resnet{depth}'](), dilate_scale=8),
      seed=depth)
  paths = [os.path.join(directory, f'{part}_epoch_20.pth') for part in ('encoder', 'decoder')]
  torch.save(random_encoder.state_dict(), paths[0])
  encoder = ModelBuilder.build_encoder(f'resnet{depth}dilated', fc_dim=fc_dim, weights=paths[0])
  for key, value in random_encoder.state_dict().items():  # it loads with strict=False
    assert torch.equal(encoder.state_dict()[key], value), key
  decoder = ref.randomize_(ModelBuilder.build_decoder('ppm_deepsup', fc_dim=fc_dim,
                                                      num_class=150), seed=depth + 1)
  torch.save(decoder.state_dict(), paths[1])
  return encoder.eval(), decoder.eval(), paths


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """depth -> (their encoder, decoder, .pth paths, our model, converted variables), built once."""
  built = {}

  def get(depth):
    if depth not in built:
      encoder, decoder, paths = _csail_reference(depth, tmp_path_factory.mktemp(f'csail{depth}'))
      model = build_model(_model_config(depth))
      built[depth] = encoder, decoder, paths, model, load_torch_checkpoint(paths, 'csail', model)
    return built[depth]
  return get


@pytest.fixture
def r18(converted):
  return converted(18)


def _nchw(images_nhwc):
  return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def _reference_outputs(encoder, decoder, images_nhwc):
  """Their pre-softmax logits (hooks) and the log-probabilities their decoder returns, NHWC."""
  captured = {}
  hooks = [decoder.conv_last.register_forward_hook(
               lambda module, inputs, output: captured.__setitem__('logits', output)),
           decoder.conv_last_deepsup.register_forward_hook(
               lambda module, inputs, output: captured.__setitem__('aux_logits', output))]
  try:
    with torch.no_grad():
      captured['log_probs'], captured['aux_log_probs'] = decoder(
          encoder(_nchw(images_nhwc), return_feature_maps=True))
  finally:
    for hook in hooks:
      hook.remove()
  return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in captured.items()}


def _outputs(model, variables, images):
  outputs = jax.jit(model.apply)(variables, images)
  outputs['log_probs'] = jax.nn.log_softmax(outputs['logits'], axis=-1)
  outputs['aux_log_probs'] = jax.nn.log_softmax(outputs['aux_logits'], axis=-1)
  return outputs


# CSAIL feeds multiples of 8; an odd size checks PyTorch's rounding of every stride too.
@pytest.mark.parametrize('depth, size', [(18, (65, 81)), (50, (64, 64))], ids=['r18', 'r50'])
def test_logits_match_mit_semseg(converted, depth, size):
  encoder, decoder, _, model, variables = converted(depth)
  images = np.random.RandomState(size[1]).randn(2, *size, 3).astype(np.float32)
  expected = _reference_outputs(encoder, decoder, images)
  outputs = _outputs(model, variables, images)
  for name in ('logits', 'aux_logits', 'log_probs', 'aux_log_probs'):
    _assert_close(outputs[name], expected[name], name)


def test_parity_check_can_fail(r18):
  """Negative control: ResNet-18 with mmseg's BasicBlock (conv2 undilated) must NOT pass."""
  encoder, decoder, _, model, variables = r18
  images = np.random.RandomState(81).randn(2, 65, 81, 3).astype(np.float32)
  expected = _reference_outputs(encoder, decoder, images)['logits']
  wrong = jax.jit(model.clone(dilate_basic_conv2=False).apply)(variables, images)['logits']
  with pytest.raises(AssertionError, match='max abs diff'):
    _assert_close(wrong, expected, 'logits')


def _csail_eval_scores(encoder, decoder, image, short_sides, max_size, multiple):
  """mit_semseg's ValDataset + eval.py for one image: softmax at the original size, averaged."""
  height, width = image.shape[:2]
  mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
  round2nearest_multiple = lambda x, p: ((x - 1) // p + 1) * p
  scores = torch.zeros(1, 150, height, width)
  decoder.use_softmax = True  # as eval.py builds it
  try:
    for short_side in short_sides:
      scale = min(short_side / float(min(height, width)), max_size / float(max(height, width)))
      target_height, target_width = int(height * scale), int(width * scale)
      target_width = round2nearest_multiple(target_width, multiple)
      target_height = round2nearest_multiple(target_height, multiple)
      resized = Image.fromarray(image).resize((target_width, target_height), Image.BILINEAR)
      x = torch.from_numpy(np.float32(np.array(resized)) / 255.).permute(2, 0, 1)
      x = ((x - mean[:, None, None]) / std[:, None, None])[None]  # transforms.Normalize
      with torch.no_grad():
        pred = decoder(encoder(x, return_feature_maps=True), segSize=(height, width))
      scores = scores + pred / len(short_sides)
  finally:
    decoder.use_softmax = False
  return scores[0].numpy().transpose(1, 2, 0)


def test_test_protocol_matches_csail_eval(r18):
  """inference.predict with resize='csail' against their ValDataset resize and eval.py
  loop (their upsampling to segSize and softmax), at small sizes."""
  encoder, decoder, _, model, variables = r18
  # Random weights give near-uniform probabilities: sharpen both classifiers alike.
  variables = jax.tree_util.tree_map(lambda x: x, variables)  # new dicts, same arrays
  seg = variables['params']['decode_head']['conv_seg']
  seg['kernel'], seg['bias'] = seg['kernel'] * SHARPEN, seg['bias'] * SHARPEN
  image = np.random.RandomState(3).randint(0, 256, (45, 61, 3)).astype(np.uint8)
  protocol = inference.TestProtocol(resize='csail', short_sides=(40, 56), max_size=72,
                                    size_multiple=8, size_divisor=None)
  assert protocol.input_sizes(45, 61) == [(40, 56), (56, 72)]  # 72 / 61 caps the second
  ours = inference.predict(inference.predictor_for_test(model, variables, protocol), image,
                           protocol)
  classifier = decoder.conv_last[4]
  original = classifier.weight.clone(), classifier.bias.clone()
  with torch.no_grad():  # their SyncBN modules hold a lock: no deepcopy, restore instead
    classifier.weight *= SHARPEN
    classifier.bias *= SHARPEN
  try:
    expected = _csail_eval_scores(encoder, decoder, image, (40, 56), 72, 8)
  finally:
    with torch.no_grad():
      classifier.weight.copy_(original[0])
      classifier.bias.copy_(original[1])
  _assert_close(ours, expected, 'averaged softmax')
  assert (ours.argmax(-1) == expected.argmax(-1)).mean() > 0.999


def test_sync_bn_buffers_are_dropped_by_name_and_nothing_else(r18):
  _, _, paths, model, _ = r18
  state = {f'{part}.{k}': v for part, path in zip(('encoder', 'decoder'), paths)
           for k, v in torch.load(path).items()}
  assert 'encoder.bn1._running_iter' in state and 'decoder.ppm.0.2._tmp_running_var' in state
  state = {k: v.numpy() for k, v in state.items()}
  state['decoder.ppm.0.2._running_var_extra'] = np.zeros(512, np.float32)
  with pytest.raises(ConversionError, match=r'unexpected in checkpoint \(1\)'):
    convert_state_dict(state, 'csail', model)


def test_files_are_checked_in_number_and_order(r18):
  _, _, paths, model, _ = r18
  with pytest.raises(errors.InputError, match='ENCODER.pth DECODER.pth; got 1 file'):
    load_torch_checkpoint(paths[0], 'csail', model)
  with pytest.raises(ConversionError, match='decoder.conv1.weight'):  # swapped
    load_torch_checkpoint(paths[::-1], 'csail', model)
  with pytest.raises(errors.InputError, match='reads one .pth file; got 2 files'):
    load_torch_checkpoint(paths, 'mmseg', model)


def test_cli_converts_the_two_files(r18, tmp_path):
  _, _, paths, _, variables = r18
  out = tmp_path / 'converted'
  subprocess.run([sys.executable, '-m', 'psp_jax.convert', '--format=csail', *paths,
                  f'--config={ROOT}/configs/ade20k_csail.py', f'--out={out}',
                  '--config.model.depth=18', '--config.model.aux_channels=128'],
                 check=True, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  restored = checkpoint.load_variables(out)
  np.testing.assert_array_equal(restored['params']['auxiliary_head']['conv_seg']['kernel'],
                                variables['params']['auxiliary_head']['conv_seg']['kernel'])
  np.testing.assert_array_equal(restored['batch_stats']['backbone']['layer4_1']['bn2']['var'],
                                variables['batch_stats']['backbone']['layer4_1']['bn2']['var'])


def _round2nearest_multiple(x, p):  # mit_semseg's BaseDataset.round2nearest_multiple
  return ((x - 1) // p + 1) * p


def _csail_downsampled_label(segm_uint8, rate):
  """TrainDataset's label path after its resize: pad with 0 (unlabelled) to a multiple of
  `rate`, PIL nearest to 1/rate, shift by -1 (-1 ignored)."""
  segm = Image.fromarray(segm_uint8)
  width = _round2nearest_multiple(segm.size[0], rate)
  height = _round2nearest_multiple(segm.size[1], rate)
  rounded = Image.new('L', (width, height), 0)
  rounded.paste(segm, (0, 0))
  segm = rounded.resize((width // rate, height // rate), Image.NEAREST)
  return np.array(segm).astype(np.int64) - 1


def _raw_labels(shape, seed, num_classes=5):
  """ADE20K-style uint8 label maps: 0 unlabelled, 1..num_classes."""
  return np.random.RandomState(seed).randint(0, num_classes + 1, shape).astype(np.uint8)


def _ours(raw):
  """Our convention for the same labels (reduce_zero_label): k -> k - 1, 0 -> 255."""
  return np.where(raw == 0, 255, raw.astype(np.int32) - 1).astype(np.int32)


@pytest.mark.parametrize('shape, rate', [((37, 50), 8), ((64, 64), 8), ((65, 81), 8),
                                         ((30, 22), 4)])
def test_label_downsampling_matches_csail(shape, rate):
  raw = _raw_labels(shape, seed=shape[0])
  ours = np.asarray(losses.downsample_labels(jnp.asarray(_ours(raw))[None], rate))[0]
  expected = _csail_downsampled_label(raw, rate)
  np.testing.assert_array_equal(np.where(ours == 255, -1, ours), expected)


class _Given(torch.nn.Module):
  """A stand-in encoder (returns its input) or decoder (log_softmax of the given logits)."""

  def __init__(self, outputs=None):
    super().__init__()
    self.outputs = outputs

  def forward(self, x, return_feature_maps=False):
    if self.outputs is None:
      return x
    return tuple(torch.log_softmax(o, dim=1) for o in self.outputs)


def test_loss_at_logits_resolution_matches_csail_segmentation_module():
  """segmentation_loss(segm_downsampling_rate=8, average='valid', aux 0.4) on full-size
  labels vs SegmentationModule's NLLLoss(ignore_index=-1) + 0.4 deep supervision and its
  pixel_acc on TrainDataset's downsampled labels; and the gradient of the logits."""
  rng = np.random.RandomState(0)
  logits, aux = (rng.randn(2, 5, 7, 5).astype(np.float32) * 3 for _ in range(2))
  raw = np.stack([_raw_labels((37, 50), seed) for seed in (1, 2)])
  torch_logits = [torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_() for x in (logits, aux)]
  module = csail_models.SegmentationModule(_Given(), _Given(torch_logits),
                                           torch.nn.NLLLoss(ignore_index=-1), deep_sup_scale=0.4)
  seg_label = torch.from_numpy(np.stack([_csail_downsampled_label(r, 8) for r in raw]))
  expected_loss, expected_acc = module({'img_data': torch.zeros(1), 'seg_label': seg_label})
  expected_loss.backward()

  def loss_fn(outputs):
    return losses.segmentation_loss(outputs, jnp.asarray(_ours(raw)), average='valid',
                                    segm_downsampling_rate=8)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(
      {'logits': jnp.asarray(logits), 'aux_logits': jnp.asarray(aux)})
  np.testing.assert_allclose(metrics['loss'], expected_loss.item(), rtol=1e-6)
  np.testing.assert_allclose(metrics['pixel_accuracy'], expected_acc.item(), rtol=1e-6)
  for key, torch_grad in zip(('logits', 'aux_logits'), torch_logits):
    np.testing.assert_allclose(grads[key], torch_grad.grad.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-8)
