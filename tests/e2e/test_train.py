"""The real training loop, small: TFDS data, pmapped steps on 4 devices, Orbax resume, init_from."""

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import tensorflow as tf

import tiny_config as tiny
import evaluate
from psp_jax.evaluation import metrics as metrics_lib
from psp_jax.models.pspnet import build_model
from psp_jax.training import checkpoint, optimizer, train_loop, train_step


def logged_train_steps(workdir):
  """Steps at which train/loss was written to TensorBoard, over all runs in `workdir`."""
  steps = []
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      steps += [event.step for v in event.summary.value if v.tag == 'train/loss']
  return steps


@pytest.fixture(scope='module')
def interrupted_run(tmp_path_factory):
  """Trains 2 of 3 steps, stops, then the same command with 3 steps resumes."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  workdir = str(tmp_path_factory.mktemp('workdir'))
  first = train_loop.train_and_evaluate(tiny.for_run(data_dir, steps=2), workdir)
  after_first = logged_train_steps(workdir)
  # The README passes a relative --workdir; Orbax itself accepts only absolute paths.
  relative = os.path.relpath(workdir)
  second = train_loop.train_and_evaluate(tiny.for_run(data_dir, steps=3), relative)
  return dict(workdir=workdir, data_dir=data_dir, first=first, second=second,
              after_first=after_first)


def _restore(workdir, subdir, data_dir, steps):
  """The checkpoint manager of `workdir/subdir` and an abstract state to restore into."""
  config = tiny.for_run(data_dir, steps)
  model = build_model(config.model, bn_axis_name='batch')
  tx = optimizer.create_optimizer(config.optimizer, steps)
  state = jax.eval_shape(lambda: train_step.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, 32, 32, 3)))
  managers = dict(zip(('checkpoints', 'best'), checkpoint.managers(workdir)))
  return managers[subdir], state


def test_resume_continues_at_the_right_step(interrupted_run):
  workdir = interrupted_run['workdir']
  assert interrupted_run['after_first'] == [1, 2]
  # The second run trained only step 3: it resumed at 2 instead of starting over.
  assert logged_train_steps(workdir) == [1, 2, 3]
  manager, state = _restore(workdir, 'checkpoints', interrupted_run['data_dir'], 3)
  assert manager.all_steps() == [2, 3]
  restored = checkpoint.restore_state(manager, state)
  assert int(restored.step) == 3
  # optax's own step counters (poly schedule position) were restored too.
  leaves = jax.tree_util.tree_leaves_with_path(restored.opt_state)
  step_counts = [int(v) for p, v in leaves if 'count' in jax.tree_util.keystr(p)]
  assert step_counts and all(c == 3 for c in step_counts)
  at_two = checkpoint.restore_state(manager, state, step=2)
  assert int(at_two.step) == 2
  # Step 3 moved the parameters away from the step-2 checkpoint it started from.
  assert not np.allclose(jax.tree_util.tree_leaves(at_two.params)[0],
                         jax.tree_util.tree_leaves(restored.params)[0])


def test_eval_metrics_predictions_and_best_checkpoint(interrupted_run):
  images = {}
  for path in glob.glob(os.path.join(interrupted_run['workdir'], 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag.startswith('eval/prediction_'):
          images[value.tag] = tf.io.decode_png(tf.make_ndarray(value.tensor)[-1]).shape
  # Image, ground truth and prediction side by side for the first 3 validation scenes.
  assert images == {f'eval/prediction_{i}': (48, 3 * 256, 3) for i in range(3)}
  metrics = interrupted_run['second']
  assert 0 <= metrics['mIoU'] <= 100 and 0 <= metrics['aAcc'] <= 100
  assert {'IoU/boat', 'IoU/car', 'Acc/buoy'} <= set(metrics)
  best, _ = _restore(interrupted_run['workdir'], 'best', interrupted_run['data_dir'], 3)
  assert best.all_steps() in ([2], [3])  # only the better of the two evaluations is kept


def test_init_from_loads_converted_variables_and_rejects_wrong_shapes(interrupted_run, tmp_path):
  config = tiny.for_run(interrupted_run['data_dir'], 3)
  model = build_model(config.model)
  state = train_step.create_train_state(
      model, optax.sgd(0.1), jax.random.PRNGKey(1), (1, 32, 32, 3))
  backbone = {'params': {'backbone': jax.tree_util.tree_map(lambda x: x + 1,
                                                            state.params['backbone'])},
              'batch_stats': {'backbone': state.batch_stats['backbone']}}
  path = checkpoint.save_variables(tmp_path / 'backbone', backbone)
  loaded = checkpoint.init_variables_from(state, path)
  for got, want in zip(jax.tree_util.tree_leaves(loaded.params['backbone']),
                       jax.tree_util.tree_leaves(backbone['params']['backbone'])):
    np.testing.assert_array_equal(got, want)
  # The heads are not in the checkpoint and keep their initialisation.
  for got, want in zip(jax.tree_util.tree_leaves(loaded.params['decode_head']),
                       jax.tree_util.tree_leaves(state.params['decode_head'])):
    np.testing.assert_array_equal(got, want)

  wrong = {'params': {'decode_head': {'conv_seg': {'kernel': np.zeros((1, 1, 8, 150))}}}}
  path = checkpoint.save_variables(tmp_path / 'wrong', wrong)
  with pytest.raises(ValueError, match=r'decode_head/conv_seg/kernel: checkpoint \(1, 1, 8, 150\)'):
    checkpoint.init_variables_from(state, path)


def test_confusion_matrix_metrics_by_hand():
  labels = np.array([[[0, 0, 1, 1, 255, 2, 1]]])
  predictions = np.array([[[0, 1, 1, 1, 0, 0, 4]]])
  matrix = np.asarray(metrics_lib.confusion_matrix(predictions, labels, num_classes=5))
  np.testing.assert_array_equal(matrix, [[1, 1, 0, 0, 0], [0, 2, 0, 0, 1], [1, 0, 0, 0, 0],
                                         [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
  metrics = metrics_lib.segmentation_metrics(matrix, ['a', 'b', 'c', 'd', 'e'])
  # IoU a = 1/3, b = 2/4, c = 0 (labelled, never hit), d absent everywhere -> NaN, skipped,
  # e = 0 (predicted once, never labelled: counts in mIoU, NaN accuracy as mmseg).
  np.testing.assert_allclose(metrics['mIoU'], 100 * (1 / 3 + 2 / 4 + 0 + 0) / 4)
  np.testing.assert_allclose(metrics['mAcc'], 100 * (1 / 2 + 2 / 3 + 0) / 3)
  np.testing.assert_allclose(metrics['aAcc'], 100 * 3 / 6)
  assert np.isnan(metrics['IoU/d']) and metrics['IoU/e'] == 0 and np.isnan(metrics['Acc/e'])


@pytest.mark.parametrize('ignored_share', [0.2, 1.0], ids=['some-ignored', 'all-ignored'])
def test_metrics_match_mmseg_iou_metric(ignored_share):
  """mmseg 1.2.2's IoUMetric on the same maps; with no labelled pixel its aAcc is NaN too."""
  import torch  # pylint: disable=g-import-not-at-top
  from mmseg.evaluation.metrics import IoUMetric  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  labels = rng.randint(0, 6, (3, 17, 19))
  labels[rng.rand(*labels.shape) < ignored_share] = 255
  predictions = np.where(rng.rand(*labels.shape) < 0.6, labels % 255, rng.randint(0, 6, labels.shape))
  matrix = sum(np.asarray(metrics_lib.confusion_matrix(p[None], l[None], 6))
               for p, l in zip(predictions, labels))
  ours = metrics_lib.segmentation_metrics(matrix)
  areas = [IoUMetric.intersect_and_union(torch.from_numpy(p), torch.from_numpy(l), 6, 255)
           for p, l in zip(predictions, labels)]
  totals = [sum(a[i] for a in areas) for i in range(4)]
  theirs = IoUMetric.total_area_to_metrics(*totals, ['mIoU'], nan_to_num=None,
                                           beta=1)
  np.testing.assert_allclose(ours['aAcc'], 100 * theirs['aAcc'], rtol=1e-7)
  np.testing.assert_allclose([ours[f'IoU/{c}'] for c in range(6)], 100 * theirs['IoU'], rtol=1e-7)
  np.testing.assert_allclose([ours[f'Acc/{c}'] for c in range(6)], 100 * theirs['Acc'], rtol=1e-7)


def test_metric_entry_points_reject_labels_outside_the_classes():
  """mmseg would drop such a label but count its prediction; psp_jax refuses the map."""
  with pytest.raises(ValueError, match=r'label values \[7\] are neither class ids in \[0, 6\)'):
    metrics_lib.check_labels(np.array([[0, 7, 255]]), 6, 'a label map')
  metrics_lib.check_labels(np.array([[0, 5, 255]]), 6)


def test_evaluate_reproduces_the_validation_of_the_best_checkpoint(interrupted_run):
  config = tiny.for_run(interrupted_run['data_dir'], 3)
  config.test.resize = 'none'
  variables, step = checkpoint.load_trained_variables(interrupted_run['workdir'], 'best')
  metrics, table, _ = evaluate.evaluate(config, build_model(config.model), variables, 'validation')
  # Training validated step 2 and step 3 on the same whole 48x256 scenes; the best is kept.
  expected = interrupted_run['second'] if step == 3 else interrupted_run['first']
  assert metrics['mIoU'] == pytest.approx(expected['mIoU'], abs=1e-6)
  assert metrics['IoU/boat'] == pytest.approx(expected['IoU/boat'], nan_ok=True, abs=1e-6)
  assert 'sidewalk' in table and f'mIoU {metrics["mIoU"]:.2f}' in table


def test_predict_writes_masks_and_overlays_of_own_images(interrupted_run, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from psp_jax.data.builders import synthetic_scenes  # pylint: disable=g-import-not-at-top
  image, _ = synthetic_scenes.render_scene(12345)
  Image.fromarray(image[:, :120]).save(tmp_path / 'street.png')  # any size
  Image.fromarray(image[:, :120]).save(tmp_path / 'street.jpg')  # same name, other suffix
  # A phone photo: stored 48x120 landscape, EXIF orientation 6 (shown rotated 90 degrees).
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(image[:, :120]).save(tmp_path / 'phone.jpg', exif=exif)
  (tmp_path / 'broken.png').write_bytes(b'not an image')
  Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / 'big.png')
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  config = os.path.join(root, 'configs', 'quickstart.py')
  overrides = ['--config.model.stem_widths=(4,4,8)', '--config.model.base_width=4',
               '--config.model.ppm_channels=4', '--config.model.channels=8',
               '--config.model.aux_channels=4']
  result = subprocess.run([sys.executable, os.path.join(root, 'predict.py'),
                           f'--config={config}', *overrides,
                           f'--workdir={interrupted_run["workdir"]}', str(tmp_path),
                           '--max_pixels=6000', '--max_network_pixels=5000',
                           f'--out={tmp_path / "out"}'],
                          cwd=root, capture_output=True, text=True)
  assert result.returncode == 1, result.stderr
  assert f'error: {tmp_path / "broken.png"}: cannot read it as an image' in result.stderr
  assert (f'error: {tmp_path / "big.png"}: 100x100 pixels, more than --max_pixels=6000; '
          'downscale it') in result.stderr
  assert 'Traceback' not in result.stderr
  # Past --max_network_pixels, in windows of the quickstart's 48x256 crop: 4 for the photo.
  assert (f'{tmp_path / "phone.jpg"}: network input 120x48 is more than '
          '--max_network_pixels=5000: run in windows of 48x256 at stride 32x168.') in result.stderr
  assert sorted(os.listdir(tmp_path / 'out')) == [
      f'{name}_{kind}.png' for name in ('phone.jpg', 'street.jpg', 'street.png')
      for kind in ('mask', 'overlay')]
  mask = np.asarray(Image.open(tmp_path / 'out' / 'street.png_mask.png'))
  overlay = np.asarray(Image.open(tmp_path / 'out' / 'street.png_overlay.png'))
  assert mask.shape == (48, 120, 3)
  colours = {tuple(c) for c in mask.reshape(-1, 3)}
  assert colours <= set(synthetic_scenes.PALETTE)
  assert overlay.shape[0] > 48 and overlay.shape[1] == 120  # the legend below the overlay
  assert np.asarray(Image.open(tmp_path / 'out' / 'phone.jpg_mask.png')).shape == (120, 48, 3)


def test_predict_of_an_empty_folder_says_so_in_one_line(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  (tmp_path / 'empty').mkdir()
  result = subprocess.run([sys.executable, os.path.join(root, 'predict.py'),
                           '--config=configs/quickstart.py', f'--workdir={tmp_path}',
                           str(tmp_path / 'empty'), f'--out={tmp_path / "out"}'], cwd=root,
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: no images found in {tmp_path / "empty"}')


def test_colorize_draws_the_palette_and_ignore_in_black():
  from psp_jax.evaluation import visualize  # pylint: disable=g-import-not-at-top
  colours = visualize.colorize(np.array([[0, 1], [255, 7]]), [(1, 2, 3), (4, 5, 6)])
  np.testing.assert_array_equal(colours, [[[1, 2, 3], [4, 5, 6]], [[0, 0, 0], [0, 0, 0]]])


def test_bucketed_evaluate_agrees_with_per_image_evaluate(interrupted_run):
  config = tiny.for_run(interrupted_run['data_dir'], 3)
  config.test.resize = 'none'
  variables, _ = checkpoint.load_trained_variables(interrupted_run['workdir'], 'best')
  per_image, _, _ = evaluate.evaluate(config, build_model(config.model), variables, 'validation')
  config.test.size_divisor = 16  # pmapped over the 4 simulated devices; 48x256 needs no padding
  bucketed, _, _ = evaluate.evaluate(config, build_model(config.model), variables, 'validation')
  assert bucketed['aAcc'] == pytest.approx(per_image['aAcc'], abs=0.01)
  assert bucketed['mIoU'] == pytest.approx(per_image['mIoU'], abs=0.01, nan_ok=True)


def test_the_platform_is_logged_and_a_missing_accelerator_warned_about(monkeypatch):
  # Recorded from absl's calls: after an in-process train.py run, absl's handler, not
  # pytest's caplog, holds the log.
  lines = []
  for level in ('info', 'warning'):
    monkeypatch.setattr(train_loop.logging, level,
                        lambda message, *args: lines.append(message % args))
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')  # jax is already up: only the check reads it
  train_loop.log_devices()
  text = '\n'.join(lines)
  assert 'local cpu devices' in text
  assert 'JAX_PLATFORMS=cuda,cpu asks for cuda, but JAX found only CPU devices' in text
  lines.clear()
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  train_loop.log_devices()
  text = '\n'.join(lines)
  assert 'local cpu devices' in text and 'only CPU devices' not in text
