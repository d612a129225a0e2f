"""Adaptive pooling, max pooling and bilinear resizing match PyTorch, on sizes that do not
divide: the plain ops (psp_jax.models.resample) and their psp_jax.models.kernels rewrites alike."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psp_jax.models import resample
from psp_jax.models.kernels import pooling, pyramid, resize

MAX_POOLS = {'plain': resample.max_pool, 'kernel': pooling.max_pool}
RESIZES = {'plain': resample.resize_bilinear, 'kernel': resize.resize_bilinear}

SIZES = [(7, 3), (13, 6), (5, 6), (97, 2), (1, 1), (60, 6), (17, 4)]


def _pool_by_loop(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """PyTorch's rule written out: bin i spans [floor(i*H/n), ceil((i+1)*H/n))."""
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c), np.float64)
  for i in range(out_h):
    h0, h1 = (i * h) // out_h, int(np.ceil((i + 1) * h / out_h))
    for j in range(out_w):
      w0, w1 = (j * w) // out_w, int(np.ceil((j + 1) * w / out_w))
      out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


@pytest.mark.parametrize('in_h,out_h', SIZES)
def test_adaptive_pool_matches_bin_loop_and_torch(in_h, out_h):
  in_w, out_w = in_h + 4, max(1, out_h - 1)
  x = np.random.RandomState(in_h).randn(2, in_h, in_w, 3).astype(np.float32)
  ours = np.asarray(resample.adaptive_avg_pool(x, (out_h, out_w)))
  np.testing.assert_allclose(ours, _pool_by_loop(x, out_h, out_w), atol=1e-5)
  ref = F.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), (out_h, out_w))
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_pyramid_of_pools_in_one_product_matches_torch():
  x = np.random.RandomState(0).randn(2, 13, 9, 5).astype(np.float32)
  sizes = (1, 2, 3, 6, 4)
  pooled = pyramid.adaptive_avg_pools(x, sizes)
  for size, ours in zip(sizes, pooled):
    ref = F.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), size)
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize('version', MAX_POOLS)
@pytest.mark.parametrize('shape', [(2, 17, 12, 3), (1, 32, 32, 4), (2, 8, 9, 2)])
def test_max_pool_values_and_gradient_match_torch_with_ties(shape, version):
  rng = np.random.RandomState(0)
  x = np.maximum(rng.randn(*shape), 0).astype(np.float32)   # ReLU output: windows of zeros
  x[0, :4, :4] = 0.0
  ours, vjp = jax.vjp(lambda v: MAX_POOLS[version](v, 3, 2, 1), x)
  torch_x = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
  ref = F.max_pool2d(torch_x, 3, 2, 1)
  grad = rng.randn(*ref.shape).astype(np.float32)
  ref.backward(torch.from_numpy(grad))
  np.testing.assert_array_equal(ours, ref.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(vjp(grad.transpose(0, 2, 3, 1))[0],
                             torch_x.grad.numpy().transpose(0, 2, 3, 1), atol=1e-6)


def test_adaptive_bins_overlap_when_size_does_not_divide():
  weights = resample.adaptive_pool_matrix(7, 3)  # bins [0,3), [2,5), [4,7)
  np.testing.assert_array_equal(weights > 0, [[1, 1, 1, 0, 0, 0, 0],
                                              [0, 0, 1, 1, 1, 0, 0],
                                              [0, 0, 0, 0, 1, 1, 1]])


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('in_size,out_size', [((6, 6), (97, 129)), ((13, 17), (97, 129)),
                                              ((97, 129), (13, 17)), ((1, 1), (5, 3)),
                                              ((3, 2), (64, 64))])
@pytest.mark.parametrize('version', RESIZES)
def test_resize_matches_torch_interpolate(in_size, out_size, align_corners, version):
  x = np.random.RandomState(0).randn(2, *in_size, 5).astype(np.float32)
  ours = np.asarray(RESIZES[version](x, out_size, align_corners))
  ref = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=out_size, mode='bilinear',
                      align_corners=align_corners)
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('in_size,out_size', [((6, 6), (97, 129)), ((97, 129), (13, 17)),
                                              ((1, 1), (5, 3))])
@pytest.mark.parametrize('version', RESIZES)
def test_resize_gradient_matches_torch_backward(in_size, out_size, align_corners, version):
  rng = np.random.RandomState(1)
  x = rng.randn(2, *in_size, 5).astype(np.float32)
  upstream = rng.randn(2, *out_size, 5).astype(np.float32)
  _, vjp = jax.vjp(lambda v: RESIZES[version](v, out_size, align_corners), x)
  ours = np.asarray(vjp(upstream)[0])
  x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
  F.interpolate(x_torch, size=out_size, mode='bilinear', align_corners=align_corners).backward(
      torch.from_numpy(upstream.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(ours, x_torch.grad.numpy().transpose(0, 2, 3, 1), atol=1e-4)


def test_jax_image_resize_is_not_pytorch_when_downsampling():
  """Why resample exists: jax.image.resize antialiases, PyTorch does not."""
  x = np.random.RandomState(0).randn(1, 97, 129, 2).astype(np.float32)
  ours = np.asarray(resample.resize_bilinear(x, (13, 17), align_corners=False))
  theirs = np.asarray(jax.image.resize(x, (1, 13, 17, 2), 'bilinear'))
  assert np.abs(ours - theirs).max() > 0.1


@pytest.mark.parametrize('in_size,out_size,align_corners',
                         [(1, 64, False), (2, 9, True), (3, 65, False), (6, 60, True),
                          (6, 6, False), (6, 97, False)])
def test_upsampled_conv3x3_is_conv_of_torch_upsampling(in_size, out_size, align_corners):
  rng = np.random.RandomState(out_size)
  x = rng.randn(2, in_size, in_size + 1, 5).astype(np.float32)
  kernel = rng.randn(3, 3, 5, 4).astype(np.float32)
  size = (out_size, out_size + 3)
  ours = np.asarray(pyramid.upsampled_conv3x3(x, kernel, size, align_corners))
  up = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size, mode='bilinear',
                     align_corners=align_corners)
  theirs = F.conv2d(up, torch.from_numpy(kernel).permute(3, 2, 0, 1), padding=1)
  np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=2e-5, rtol=1e-5)
