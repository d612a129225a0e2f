"""psp_jax.models.kernels: each speed rewrite equals the plain computation, and no mode changes
the parameter tree. (Pooling, resizing and the pyramid's pieces against PyTorch:
test_resample.py; the convolution rewrites: test_conv.py, test_winograd.py.)"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psp_jax import build_model
from psp_jax.models import kernels
from psp_jax.training import losses

TINY = dict(num_classes=5, depth=18, stem_widths=(4, 4, 8), base_width=8, ppm_channels=4,
            channels=8, aux_channels=4, dropout_rate=0.0)


def test_auto_is_cpu_on_cpu_devices_and_xla_elsewhere():
  assert kernels.resolve('auto', 'cpu') == 'cpu'
  assert kernels.resolve('auto', 'gpu') == kernels.resolve('auto', 'tpu') == 'xla'
  assert kernels.resolve('xla', 'cpu') == 'xla' and kernels.resolve('cpu', 'gpu') == 'cpu'
  assert kernels.get('xla') == kernels.Kernels() and kernels.get('cpu') != kernels.Kernels()
  with pytest.raises(ValueError, match="config.model.kernels='fast'"):
    build_model(dict(TINY, kernels='fast'))


def _loss_and_grads(mode, variables, images, labels):
  model = build_model(dict(TINY, kernels=mode))
  cross_entropy = kernels.get(mode).cross_entropy_sums

  def loss_fn(params):
    outputs, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                             images, train=True, mutable=['batch_stats'])
    return losses.segmentation_loss(outputs, labels, cross_entropy_sums=cross_entropy)[0]

  return jax.jit(jax.value_and_grad(loss_fn))(variables['params'])


def test_cpu_kernels_give_the_plain_model_same_parameters_outputs_and_gradients():
  rng = np.random.RandomState(0)
  images = rng.randn(2, 61, 75, 3).astype(np.float32)
  labels = np.where(rng.rand(2, 61, 75) < 0.2, 255, rng.randint(0, 5, (2, 61, 75)))
  labels = labels.astype(np.int32)
  variables = {
      mode: jax.jit(build_model(dict(TINY, kernels=mode)).init)(jax.random.PRNGKey(0), images)
      for mode in ('xla', 'cpu')}
  assert (jax.tree_util.tree_map(jnp.shape, variables['xla'])
          == jax.tree_util.tree_map(jnp.shape, variables['cpu']))
  plain = build_model(dict(TINY, kernels='xla'))
  fast = build_model(dict(TINY, kernels='cpu'))
  for method in (None, 'segment'):
    ours = jax.jit(lambda v, x, m=method: fast.apply(v, x, method=m))(variables['xla'], images)
    want = jax.jit(lambda v, x, m=method: plain.apply(v, x, method=m))(variables['xla'], images)
    for got, expected in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(want)):
      scale = np.abs(expected).max()
      assert scale > 0.01 and np.abs(got - expected).max() <= 1e-5 * scale

  value, grads = _loss_and_grads('cpu', variables['xla'], images, labels)
  plain_value, plain_grads = _loss_and_grads('xla', variables['xla'], images, labels)
  np.testing.assert_allclose(value, plain_value, rtol=1e-5)
  grads = flax.traverse_util.flatten_dict(grads, sep='/')
  plain_grads = flax.traverse_util.flatten_dict(plain_grads, sep='/')
  errors = {k: np.abs(grads[k] - g).max() / np.abs(g).max() for k, g in plain_grads.items()
            if np.abs(g).max() > 0}
  # The 1x1 bin's BatchNorm sees 2 values per channel (one per image): its normalised
  # output is +-1 whatever their difference d, and its gradient scales with 1/|d|, so
  # rounding in d is amplified there. Measured 1.9e-3 on a VM without AVX-512, below
  # 1e-3 with it; every other leaf within 1e-5.
  bin1 = [k for k in errors if k.startswith('decode_head/ppm/branch0/')]
  assert bin1 and max(errors[k] for k in bin1) <= 1e-2, {k: errors[k] for k in bin1}
  worst = max((e, k) for k, e in errors.items() if k not in bin1)
  assert worst[0] <= 1e-4, worst


@pytest.mark.parametrize('align_corners', [False, True])
def test_blockwise_loss_equals_the_plain_loss(align_corners):
  from psp_jax.models.kernels import cross_entropy
  rng = np.random.RandomState(1)
  logits = jnp.asarray(rng.randn(2, 9, 11, 7), jnp.float32)
  labels = np.where(rng.rand(2, 67, 83) < 0.3, 255, rng.randint(0, 7, (2, 67, 83)))
  labels = jnp.asarray(labels, jnp.int32)
  results = []
  for sums in (losses.upsampled_cross_entropy_sums, cross_entropy.upsampled_cross_entropy_sums):
    value, vjp = jax.vjp(lambda x, f=sums: f(x, labels, align_corners)[0], logits)
    results.append((value, sums(logits, labels, align_corners)[1], vjp(jnp.ones(()))[0]))
  (value, hits, grad), (block_value, block_hits, block_grad) = results
  np.testing.assert_allclose(block_value, value, rtol=1e-5)
  assert float(block_hits) == float(hits) > 0
  np.testing.assert_allclose(block_grad, grad, atol=1e-5 * float(np.abs(grad).max()))


def test_export_tables_are_resamples_at_symbolic_sizes():
  from psp_jax.models import resample
  from psp_jax.models.kernels import shape_polymorphic

  def tables(source, target):  # only the (symbolic) lengths of the two vectors are used
    n_in, n_out = source.shape[0], target.shape[0]
    return ([shape_polymorphic.adaptive_pool_matrix(n_in, n) for n in (1, 2, 3, 6)]
            + [shape_polymorphic.bilinear_matrix(n_in, n_out, ac) for ac in (False, True)])

  sizes = jax.export.symbolic_shape('i, o')
  run = jax.export.export(jax.jit(tables))(
      *(jax.ShapeDtypeStruct((n,), jnp.float32) for n in sizes)).call
  for n_in, n_out in [(1, 1), (1, 7), (5, 3), (7, 49), (13, 97), (64, 512), (65, 513),
                      (97, 769), (257, 2049)]:
    got = [np.asarray(t) for t in run(np.zeros(n_in, np.float32), np.zeros(n_out, np.float32))]
    for g, n in zip(got[:4], (1, 2, 3, 6)):  # integer bins and one division: exact
      np.testing.assert_array_equal(g, resample.adaptive_pool_matrix(n_in, n))
    # XLA:CPU contracts the source coordinate's (dst + 0.5) * scale - 0.5 into one fused
    # multiply-add, which moves it (and the fractions) by up to one float32 ulp of n_in.
    for g, ac in zip(got[4:], (False, True)):
      np.testing.assert_allclose(g, resample.bilinear_matrix(n_in, n_out, ac), rtol=0,
                                 atol=np.finfo(np.float32).eps * n_in, err_msg=(n_in, n_out, ac))


def test_export_kernels_give_the_plain_model():
  from random_variables import random_variables
  images = np.random.RandomState(2).randn(1, 61, 75, 3).astype(np.float32)
  plain, export = (build_model(dict(TINY, kernels=mode)) for mode in ('xla', 'export'))
  variables = random_variables(plain)
  want, got = (jax.jit(lambda v, x, m=m: m.apply(v, x, method='segment'))(variables, images)
               for m in (plain, export))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))
