"""bfloat16 training: the real train_step, jitted and pmapped over the test devices, in
every kernels mode, as close to its float32 gradient as PyTorch's autocast is to its own.

mmseg's pspnet_r18-d8 (19 classes, dropout 0, random weights and statistics) and psp_jax's
converted copy, one batch of 8 noise images with random labels: psp_jax's pmapped step on
the 4 test devices, 2 images each, BatchNorm synchronised, so that its gradient is the
8-image gradient PyTorch computes on one device. psp_jax's bfloat16 model
(`dtype='bfloat16'`, float32 parameters, BatchNorm statistics and the loss in float32)
against its float32 model; PyTorch's torch.autocast('cpu', bfloat16) against its float32
model. Closeness is the relative L2 distance of the whole gradient.
"""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from psp_jax import build_model
from psp_jax.models import kernels
from psp_jax.training import train_step
import mmseg_reference as ref
from psp_jax.convert import convert_state_dict

NUM_CLASSES = 19
DEVICES = 4
PER_DEVICE = 2
SIZE = (64, 64)


def _batch():
  rng = np.random.RandomState(0)
  images = rng.randn(DEVICES * PER_DEVICE, *SIZE, 3)
  labels = rng.randint(0, NUM_CLASSES, (DEVICES * PER_DEVICE, *SIZE)).astype(np.int32)
  return images, labels


def _relative_l2(got: dict, want: dict) -> float:
  keys = [k for k, v in want.items() if np.abs(v).max() > 0]
  error = sum(float(((np.asarray(got[k], np.float64) - want[k]) ** 2).sum()) for k in keys)
  return float(np.sqrt(error / sum(float((want[k] ** 2).sum()) for k in keys)))


@pytest.fixture(scope='module')
def reference():
  model = ref.build(ref.pspnet_config(18, NUM_CLASSES, dropout_ratio=0.0), seed=18)
  images, labels = _batch()
  float32 = ref.reference_gradients(model, images, labels, torch.float32)[1]
  autocast = ref.reference_gradients(model, images, labels, torch.float32, autocast=True)[1]
  return ref.state_dict(model), _relative_l2(autocast, float32)


def _remember_gradient() -> optax.GradientTransformation:
  """An optimizer whose state is the last gradient and whose update is zero."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree_util.tree_map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (
          jax.tree_util.tree_map(jnp.zeros_like, grads), grads))


def _pmapped_gradient(state_dict, mode: str, dtype: str):
  """(loss, flat float64 gradient) of the pmapped train_step on the batch."""
  model = build_model(num_classes=NUM_CLASSES, depth=18, channels=128, ppm_channels=128,
                      aux_channels=64, dropout_rate=0.0, kernels=mode, dtype=dtype,
                      bn_axis_name='batch')
  variables = convert_state_dict(state_dict, 'mmseg', model)
  state = train_step.TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=_remember_gradient(),
      batch_stats=variables['batch_stats'], dropout_rng=jax.random.PRNGKey(0))
  step = train_step.pmapped_train_step(lambda count: jnp.zeros(()), aux_weight=0.4,
                                       loss_average='valid',
                                       cross_entropy_sums=model.ops.cross_entropy_sums)
  images, labels = _batch()
  batch = {'image': images.astype(np.float32).reshape(DEVICES, PER_DEVICE, *SIZE, 3),
           'label': labels.reshape(DEVICES, PER_DEVICE, *SIZE)}
  state, metrics = step(train_step.replicate(state), batch)
  grads = jax.tree_util.tree_map(lambda x: np.asarray(x[0], np.float64), state.opt_state)
  return float(metrics['loss'][0]), flax.traverse_util.flatten_dict(grads, sep='/')


# 'auto' is the 'cpu' kernels on this machine (the same Kernels object): its row is 'cpu''s.
@pytest.mark.parametrize('mode', ['xla', 'cpu'])
def test_bfloat16_train_step_is_as_close_to_float32_as_pytorch_autocast(reference, mode):
  assert len(jax.local_devices()) == DEVICES
  assert kernels.get('auto') is kernels.get('cpu')
  state_dict, theirs = reference
  loss32, float32 = _pmapped_gradient(state_dict, mode, 'float32')
  loss16, bfloat16 = _pmapped_gradient(state_dict, mode, 'bfloat16')
  assert np.isfinite(loss16) and abs(loss16 - loss32) <= 0.05 * loss32, (loss16, loss32)
  assert all(np.isfinite(g).all() for g in bfloat16.values())
  ours = _relative_l2(bfloat16, float32)
  print(f'{mode}: psp_jax bfloat16 {ours:.4f}, PyTorch autocast {theirs:.4f} (relative L2)')
  assert ours <= theirs, (ours, theirs)


# A dot or convolution of bfloat16 operands into a float32 result: XLA:CPU's DotThunk has
# no such kernel on machines without AVX512-BF16 ("Unsupported element type for
# DotThunk::Execute: BF16 x BF16 = F32"), so the jitted step would crash there.
_MIXED = re.compile(r'stablehlo\.(dot_general|convolution)[^\n]*:\s*'
                    r'\(tensor<[^>]*xbf16>, tensor<[^>]*xbf16>\) -> tensor<[^>]*xf32>')


def test_the_check_for_mixed_precision_dots_sees_one():
  a = jax.ShapeDtypeStruct((2, 16, 16, 32), jnp.bfloat16)
  b = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.bfloat16)
  text = jax.jit(lambda a, b: jnp.einsum('bhwc,bhwo->co', a, b,
                                         preferred_element_type=jnp.float32)).lower(a, b)
  assert _MIXED.search(text.as_text())


@pytest.mark.parametrize('mode', ['xla', 'cpu'])
def test_the_bfloat16_train_step_asks_for_no_mixed_precision_dot(mode):
  model = build_model(num_classes=NUM_CLASSES, depth=18, stem_widths=(8, 8, 16), base_width=16,
                      channels=16, ppm_channels=8, aux_channels=8, dropout_rate=0.0,
                      kernels=mode, dtype='bfloat16')
  images = jax.ShapeDtypeStruct((2, *SIZE, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((2, *SIZE), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  state = jax.eval_shape(lambda v: train_step.TrainState.create(
      apply_fn=model.apply, params=v['params'], tx=optax.sgd(0.1),
      batch_stats=v['batch_stats'], dropout_rng=jax.random.PRNGKey(0)), variables)
  step = jax.jit(lambda state, batch: train_step.train_step(
      state, batch, lambda count: 0.1, axis_name=None,
      cross_entropy_sums=model.ops.cross_entropy_sums))
  text = step.lower(state, {'image': images, 'label': labels}).as_text()
  assert 'bf16' in text
  mixed = _MIXED.search(text)
  assert not mixed, mixed.group(0)
