"""Loss, schedule, optimizer and the pmapped train step (sync BN, pmean of gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import jax_utils

from psp_jax import build_model
from psp_jax.models.kernels import cross_entropy
from psp_jax.training import losses, optimizer, train_step

TINY = dict(depth=18, stem_widths=(4, 4, 8), base_width=4, channels=8, ppm_channels=8,
            aux_channels=4, num_classes=5, dropout_rate=0.0)
OPTIMIZER = dict(schedule='mmseg', learning_rate=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4,
                 decay_norm_and_bias=True, head_lr_mult=1.0, poly_power=0.9,
                 end_learning_rate=1e-4, warmup_steps=0, warmup_ratio=0.1)


def _labels(shape, seed=0, ignore_share=0.3):
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 5, shape)
  labels[rng.rand(*shape) < ignore_share] = 255
  return jnp.asarray(labels, jnp.int32)


@pytest.mark.parametrize('average', ['valid', 'all'])
def test_loss_matches_torch_cross_entropy_with_ignore(average):
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 11, 5))
  labels = _labels((2, 9, 11))
  loss, metrics = losses.segmentation_loss({'logits': logits}, labels, average=average)
  torch_logits = torch.from_numpy(np.asarray(logits).transpose(0, 3, 1, 2))
  torch_labels = torch.from_numpy(np.asarray(labels)).long()
  expected = F.cross_entropy(torch_logits, torch_labels, ignore_index=255,
                             reduction='mean' if average == 'valid' else 'sum')
  if average == 'all':  # mmseg's default: ignored pixels count in the denominator
    expected = expected / labels.size
  np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
  assert metrics['main_loss'] == loss


CLASS_WEIGHT = (0.5, 2.0, 1.0, 4.0, 0.25)


@pytest.mark.parametrize('average', ['valid', 'all'])
@pytest.mark.parametrize('version', ['plain', 'blocks'])
def test_class_weighted_loss_is_the_weighted_average_in_both_heads(average, version):
  """'valid': PyTorch's F.cross_entropy(weight=w) mean (mmseg 1.2.2's avg_non_ignore=True);
  'all': the same sum over the labelled pixels' weights plus one per ignored pixel."""
  sums = (losses.upsampled_cross_entropy_sums if version == 'plain'
          else cross_entropy.upsampled_cross_entropy_sums)
  rng = np.random.RandomState(3)
  logits = rng.randn(2, 5, 6, 5).astype(np.float32)
  aux = rng.randn(2, 5, 6, 5).astype(np.float32)
  labels = _labels((2, 37, 41), seed=4)

  def loss_fn(logits, aux):
    return losses.segmentation_loss({'logits': logits, 'aux_logits': aux}, labels,
                                    average=average, class_weight=CLASS_WEIGHT,
                                    cross_entropy_sums=sums)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      jnp.asarray(logits), jnp.asarray(aux))

  torch_labels = torch.from_numpy(np.asarray(labels)).long()
  weight = torch.tensor(CLASS_WEIGHT)
  inputs = [torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_() for x in (logits, aux)]
  heads = []
  for x in inputs:
    upsampled = F.interpolate(x, labels.shape[1:], mode='bilinear', align_corners=False)
    head = F.cross_entropy(upsampled, torch_labels, weight=weight, ignore_index=255)
    if average == 'all':
      labelled = weight[torch_labels.clamp(max=4)][torch_labels != 255].sum()
      head = head * labelled / (labelled + (torch_labels == 255).sum())
    heads.append(head)
  expected = heads[0] + 0.4 * heads[1]
  expected.backward()
  np.testing.assert_allclose(loss, expected.item(), rtol=1e-5)
  np.testing.assert_allclose(metrics['aux_loss'], heads[1].item(), rtol=1e-5)
  for ours, x in zip(grads, inputs):
    np.testing.assert_allclose(ours, x.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('average', ['valid', 'all'])
def test_class_weighted_loss_over_devices_is_the_global_batch_loss(average):
  """4 devices x 2 label maps, labelled pixels and classes spread unevenly: the pmean of the
  per-device losses is the weighted loss of the whole batch, and each device's gradient n
  times that loss's for its images (so the pmean of parameter gradients is the global one)."""
  n = jax.local_device_count()
  logits = jax.random.normal(jax.random.PRNGKey(2), (2 * n, 4, 5, 5))
  labels = jnp.concatenate([_labels((2, 19, 23), seed=i, ignore_share=0.1 + 0.25 * i)
                            for i in range(n)])

  def loss(logits, labels, axis_name=None):
    return losses.segmentation_loss({'logits': logits, 'aux_logits': 2 * logits}, labels,
                                    average=average, class_weight=CLASS_WEIGHT,
                                    axis_name=axis_name)[0]
  expected, expected_grad = jax.value_and_grad(loss)(logits, labels)
  def device_step(x, y):
    value, grad = jax.value_and_grad(lambda x: loss(x, y, 'batch'))(x)
    return jax.lax.pmean(value, 'batch'), grad
  value, grad = jax.pmap(device_step, axis_name='batch')(logits.reshape(n, 2, 4, 5, 5),
                                                          labels.reshape(n, 2, 19, 23))
  np.testing.assert_allclose(value, np.full(n, expected), rtol=1e-6)
  np.testing.assert_allclose(grad.reshape(expected_grad.shape), n * expected_grad, rtol=1e-5,
                             atol=1e-7)


def test_class_weights_of_ones_change_nothing_and_bad_ones_are_refused():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 5))
  labels = _labels((2, 16, 16))
  for average in ('valid', 'all'):
    plain, _ = losses.segmentation_loss({'logits': logits}, labels, average=average)
    ones, _ = losses.segmentation_loss({'logits': logits}, labels, average=average,
                                       class_weight=(1.0,) * 5)
    np.testing.assert_allclose(ones, plain, rtol=1e-6)
  for bad in ((1.0,) * 4, (1.0, -1.0, 1.0, 1.0, 1.0), (0.0,) * 5, (1.0, float('nan'), 1, 1, 1)):
    with pytest.raises(ValueError, match='one finite weight >= 0 per class'):
      losses.segmentation_loss({'logits': logits}, labels, class_weight=bad)


def test_loss_ignores_255_and_upsamples_aux_with_weight():
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 5))
  aux = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 4, 5))
  labels = _labels((1, 32, 32), ignore_share=0.5)
  ignored = np.asarray(labels == 255)
  loss, metrics = losses.segmentation_loss({'logits': logits, 'aux_logits': aux}, labels)
  np.testing.assert_allclose(loss, metrics['main_loss'] + 0.4 * metrics['aux_loss'], rtol=1e-6)
  # Any label at an ignored pixel leaves the loss as it was.
  relabelled = jnp.where(ignored, 3, 0) + jnp.where(ignored, 0, labels)
  changed, _ = losses.segmentation_loss({'logits': logits, 'aux_logits': aux},
                                        jnp.where(ignored, 255, relabelled))
  np.testing.assert_allclose(changed, loss, rtol=1e-6)
  everything_ignored, _ = losses.segmentation_loss({'logits': logits},
                                                   jnp.full((1, 32, 32), 255, jnp.int32))
  assert everything_ignored == 0.0


def test_loss_at_logits_resolution_needs_logits_on_the_downsampled_grid():
  """segm_downsampling_rate=8: labels 37x50 -> 5x7 (tests/parity/test_csail_parity.py has the values)."""
  labels = _labels((2, 37, 50))
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 5))
  loss, _ = losses.segmentation_loss({'logits': logits}, labels, segm_downsampling_rate=8)
  assert np.isfinite(loss)
  with pytest.raises(ValueError, match='segm_downsampling_rate=8 gives labels of'):
    losses.segmentation_loss({'logits': logits[:, :4]}, labels, segm_downsampling_rate=8)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('logit_size,label_size', [((5, 7), (37, 50)), ((40, 40), (13, 17)),
                                                    ((9, 11), (9, 11))])
@pytest.mark.parametrize('version,block_rows', [('plain', None), ('blocks', None), ('blocks', 4)])
def test_upsampled_loss_matches_torch_interpolate_then_cross_entropy(
    monkeypatch, align_corners, logit_size, label_size, version, block_rows):
  """Sum, argmax hits and gradient of the plain and the blockwise (psp_jax.models.kernels) loss vs
  F.interpolate + F.cross_entropy."""
  sums = (losses.upsampled_cross_entropy_sums if version == 'plain'
          else cross_entropy.upsampled_cross_entropy_sums)
  if block_rows:  # several blocks of rows, the last one padded
    monkeypatch.setattr(cross_entropy, '_BLOCK_VALUES', block_rows * 2 * label_size[1] * 6)
  logits = np.random.RandomState(1).randn(2, *logit_size, 6).astype(np.float32) * 3
  labels = np.array(_labels((2, *label_size), seed=2))
  labels[labels == 4] = 5                      # class 5 exists only in the labels
  logits[0, :2] = 0.0                          # ties: argmax is the first class
  total, hits = sums(jnp.asarray(logits), jnp.asarray(labels), align_corners)
  grad = jax.grad(lambda x: sums(x, jnp.asarray(labels), align_corners)[0])(jnp.asarray(logits))

  torch_logits = torch.from_numpy(logits.transpose(0, 3, 1, 2)).requires_grad_()
  upsampled = F.interpolate(torch_logits, label_size, mode='bilinear',
                            align_corners=align_corners)
  torch_labels = torch.from_numpy(labels).long()
  expected = F.cross_entropy(upsampled, torch_labels, ignore_index=255, reduction='sum')
  expected.backward()
  expected_hits = ((upsampled.argmax(1) == torch_labels) & (torch_labels != 255)).sum()
  np.testing.assert_allclose(total, expected.item(), rtol=1e-5)
  assert hits == expected_hits.item()
  np.testing.assert_allclose(grad, torch_logits.grad.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-5)


def _mmengine_learning_rates(total_steps, warmup_steps, lr_mults=(1.0, 10.0)):
  """The learning rate of each step and parameter group, from mmengine's own schedulers.

  mmseg's warm-up recipe: LinearLR(start_factor=0.1, begin=0, end=warmup_steps), then
  PolyLR(eta_min=1e-4, power=0.9, begin=warmup_steps, end=total_steps); each group
  starts from base * lr_mult, as mmseg's paramwise lr_mult.
  """
  from mmengine.optim.scheduler import LinearLR, PolyLR  # pylint: disable=g-import-not-at-top
  groups = [{'params': [torch.nn.Parameter(torch.zeros(1))], 'lr': 0.01 * m} for m in lr_mults]
  sgd = torch.optim.SGD(groups, lr=0.01)
  schedulers = []
  if warmup_steps:
    schedulers.append(LinearLR(sgd, start_factor=0.1, begin=0, end=warmup_steps, by_epoch=False))
  schedulers.append(PolyLR(sgd, eta_min=1e-4, power=0.9, begin=warmup_steps, end=total_steps,
                           by_epoch=False))
  rates = []
  for _ in range(total_steps):
    rates.append([group['lr'] for group in sgd.param_groups])
    sgd.step()
    for scheduler in schedulers:
      scheduler.step()
  return np.array(rates)


@pytest.mark.parametrize('total_steps,warmup_steps', [(10, 0), (40, 5), (7, 1)])
def test_mmseg_schedule_is_mmengines_linear_then_poly(total_steps, warmup_steps):
  config = dict(OPTIMIZER, warmup_steps=warmup_steps)
  expected = _mmengine_learning_rates(total_steps, warmup_steps)
  steps = np.arange(total_steps)
  for group, lr_mult in enumerate((1.0, 10.0)):
    schedule = optimizer.create_learning_rate_fn(config, total_steps, lr_mult)
    np.testing.assert_allclose([schedule(s) for s in steps], expected[:, group], rtol=1e-6)
  assert expected[-1, 0] == pytest.approx(1e-4)  # eta_min at the last step
  with pytest.raises(ValueError, match='warmup_steps'):
    optimizer.create_learning_rate_fn(dict(config, warmup_steps=total_steps), total_steps)


@pytest.mark.parametrize('schedule', ['mmseg', 'semseg'])
def test_every_step_of_the_jitted_schedule_has_a_finite_rate(schedule):
  """Jitted, as the train step computes it: 800 steps (the quickstart's) once gave NaN at the
  last step, 1 - 749 * (1 / 749) < 0 to the power 0.9, and NaN parameters after it."""
  config = dict(OPTIMIZER, schedule=schedule, warmup_steps=50 * (schedule == 'mmseg'),
                end_learning_rate=1e-4 * (schedule == 'mmseg'))
  for total_steps in (60, 61, 800, 1201):
    schedule_fn = optimizer.create_learning_rate_fn(config, total_steps)
    rates = np.asarray(jax.jit(jax.vmap(schedule_fn))(jnp.arange(total_steps)))
    assert np.isfinite(rates).all() and (rates > 0).all(), total_steps
    np.testing.assert_allclose(rates, [schedule_fn(s) for s in range(total_steps)], rtol=1e-5,
                               atol=1e-8)
  if schedule == 'mmseg':
    assert rates[-1] == pytest.approx(1e-4)


def test_semseg_schedule_counts_iterations_from_one_after_each_step():
  """semseg sets poly_learning_rate(base, i + 1, max_iter) after step i: step t trains at
  base * (1 - t / max_iter)**0.9, from base at step 0 to base * (1 / max_iter)**0.9."""
  config = dict(OPTIMIZER, schedule='semseg', end_learning_rate=0.0)
  schedule = optimizer.create_learning_rate_fn(config, 100, lr_mult=10.0)
  for step in (0, 1, 50, 99):
    np.testing.assert_allclose(schedule(step), 0.1 * (1 - step / 100) ** 0.9, rtol=1e-6)
  with pytest.raises(ValueError, match='no warm-up and no floor'):
    optimizer.create_learning_rate_fn(dict(config, warmup_steps=5), 100)
  with pytest.raises(ValueError, match='schedule'):
    optimizer.create_learning_rate_fn(dict(config, schedule='cosine'), 100)


def test_head_multiplier_and_decay_mask():
  params = {'backbone': {'conv': {'kernel': jnp.ones((3,))}, 'bn': {'scale': jnp.ones((3,))}},
            'decode_head': {'conv_seg': {'kernel': jnp.ones((3,)), 'bias': jnp.ones((3,))}}}
  config = dict(OPTIMIZER, momentum=0.0, weight_decay=0.1, decay_norm_and_bias=False,
                head_lr_mult=10.0)
  tx = optimizer.create_optimizer(dict(config, schedule='semseg', end_learning_rate=0.0,
                                       learning_rate=0.5, poly_power=0.0), 10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['backbone']['conv']['kernel'], -0.5 * 0.1)
  np.testing.assert_allclose(updates['backbone']['bn']['scale'], 0.0)
  np.testing.assert_allclose(updates['decode_head']['conv_seg']['kernel'], -10 * 0.5 * 0.1)
  np.testing.assert_allclose(updates['decode_head']['conv_seg']['bias'], 0.0)


def test_pmapped_step_equals_single_device_step_on_global_batch():
  """Sync BN + pmean of gradients: 4 devices x 2 images == 1 device x 8 images."""
  n = jax.local_device_count()
  assert n == 4, 'conftest.py asks XLA for 4 host devices'
  rng = np.random.RandomState(0)
  images = jnp.asarray(rng.randn(2 * n, 33, 33, 3), jnp.float32)
  # Labelled pixels spread unevenly over devices: the loss must still be the global mean.
  labels = jnp.concatenate([_labels((2, 33, 33), seed=i, ignore_share=0.1 + 0.25 * i)
                            for i in range(n)])
  schedule = optimizer.create_learning_rate_fn(OPTIMIZER, total_steps=10)
  tx = optimizer.create_optimizer(OPTIMIZER, total_steps=10)
  single_model = build_model(TINY)
  state = train_step.create_train_state(single_model, tx, jax.random.PRNGKey(0), images.shape)

  single_step = jax.jit(lambda s, b: train_step.train_step(s, b, schedule, axis_name=None))
  expected_state, expected = state, []
  for _ in range(2):
    expected_state, metrics = single_step(expected_state, {'image': images, 'label': labels})
    expected.append(metrics)

  synced = state.replace(apply_fn=build_model(TINY, bn_axis_name='batch').apply)
  replicated = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), synced)
  p_step = train_step.pmapped_train_step(schedule)
  batch = {'image': images.reshape(n, 2, 33, 33, 3), 'label': labels.reshape(n, 2, 33, 33)}
  for want in expected:
    replicated, metrics = p_step(replicated, batch)
    for key in ('loss', 'main_loss', 'aux_loss', 'pixel_accuracy', 'learning_rate'):
      np.testing.assert_allclose(metrics[key], np.full(n, want[key]), rtol=2e-5, err_msg=key)

  for name in ('params', 'batch_stats'):
    ours = jax.tree_util.tree_leaves(getattr(replicated, name))
    theirs = jax.tree_util.tree_leaves(getattr(expected_state, name))
    for a, b in zip(ours, theirs):
      for device in range(n):
        np.testing.assert_allclose(a[device], b, atol=2e-5, rtol=2e-4)


def _backend_compiles(fn, *args) -> int:
  """How many XLA programs `fn(*args)` compiles."""
  events = []
  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    jax.block_until_ready(fn(*args))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return len(events)


@pytest.mark.parametrize('replicate, second_call_compiles', [
    (train_step.replicate, 0),
    (jax_utils.replicate, 1),  # flax's: another mesh axis than the step's outputs
])
def test_a_replicated_state_is_placed_as_the_step_returns_it(replicate, second_call_compiles):
  step = jax.pmap(lambda state: jax.tree_util.tree_map(lambda x: x + 1, state),
                  axis_name='batch', donate_argnums=(0,))
  state = replicate({'w': jnp.ones((3, 2)), 'step': jnp.zeros((), jnp.int32)})
  state = step(state)
  assert _backend_compiles(step, state) == second_call_compiles
