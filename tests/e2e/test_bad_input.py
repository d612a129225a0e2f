"""Bad input gives one clear error, early, naming the value, the file and the fix (issue #6).

A dataset's own bad input is tested with that dataset (tests/data/); config values in-process
in tests/config/test_config_check.py; here, what a user meets through the scripts.

Each case runs the real entry point (train_and_evaluate, the tf.data pipeline, train.py /
evaluate.py) on real files: TFDS datasets prepared on disk, Orbax checkpoints, config files.
"""

import json
import os
import re
import subprocess
import sys

from flax import jax_utils
import jax
import numpy as np
import pytest

from psp_jax.base import errors, images
from psp_jax.data.dataset import Dataset
from psp_jax.models import build_model
from psp_jax.training import checkpoint, optimizer, train_loop, train_step

import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_script(script, *args):
  """`python script args` from the repository root, as a user runs it; (exit status, stderr)."""
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
  result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  return result.returncode, result.stderr


# ----------------------------------------------------------- config flags and files


@pytest.mark.parametrize('crop, resize_scale, scale_range, warned', [
    ((48, 256), None, (1.0, 1.0), None),          # the scenes' own size: no padding
    ((64, 256), None, (1.0, 1.0), r'at least 25% of each crop'),
    ((96, 512), None, (0.5, 2.0), None),          # the largest rescale fills it
    ((96, 512), (128, 24), (1.0, 1.0), r'is at most 24x128 after rescaling .* at least 94%'),
])
def test_a_crop_larger_than_the_images_warns_naming_both(tmp_path, crop, resize_scale,
                                                         scale_range, warned):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.augment.update(crop_size=crop, resize_scale=resize_scale, scale_range=scale_range)
  data = Dataset(config.dataset)
  data.builder.download_and_prepare()
  message = train_loop.warn_if_every_crop_is_padded(config, data)
  if warned is None:
    assert message is None
  else:
    assert re.search(r'config\.augment\.crop_size=\(\d+, \d+\) is larger than the training '
                     r'images: the first, 48x256, .*' + warned, message), message


def test_mistyped_config_flag_is_one_line_naming_the_closest_key(tmp_path):
  status, stderr = _run_script('train.py', '--config=configs/quickstart.py',
                               '--config.optimizer.learnin_rate=0.1',
                               f'--workdir={tmp_path / "workdir"}')
  assert status == 2
  assert stderr.strip().splitlines()[-1] == (
      'error: unknown config key --config.optimizer.learnin_rate '
      '(did you mean --config.optimizer.learning_rate?)')
  assert 'Traceback' not in stderr
  assert not (tmp_path / 'workdir').exists()


@pytest.mark.parametrize('args, message', [
    (['--config=configs/no_such.py'], 'error: --config=configs/no_such.py: no such file'),
    (['--config=configs/quickstart.py', '--config.model.num_classes=0'],
     'error: config.model.num_classes=0, but synthetic_scenes/default has 10 classes'),
    (['--config=configs/quickstart.py', '--config.model.depth=51'],
     'error: config.model.depth=51: use one of [18, 34, 50, 101, 152].'),
    (['--config=configs/quickstart.py', '--workdir={file}/workdir'],
     'error: --workdir={file}/workdir is not a writable folder'),
    (['--config=configs/quickstart.py', '--config.log_every_steps=0'],
     'error: config.log_every_steps=0: use a whole number >= 1.'),
    (['--config=configs/quickstart.py', '--config.optimizer.learning_rate=-0.05'],
     'error: config.optimizer.learning_rate=-0.05: use a number > 0.'),
    (['--config=configs/quickstart.py', '--config.batch_size=abc'],
     "error: flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc' "
     "(--helpshort lists the flags)"),
], ids=['missing_config', 'num_classes', 'depth', 'workdir', 'log_every_0', 'negative_lr',
        'unparsable'])
def test_train_refuses_bad_input_in_one_line(tmp_path, args, message):
  (tmp_path / 'file').write_text('a file, not a folder')
  args = [a.format(file=tmp_path / 'file') for a in args]
  if not any(a.startswith('--workdir') for a in args):
    args.append(f'--workdir={tmp_path / "workdir"}')
  status, stderr = _run_script('train.py', *args, f'--config.dataset.data_dir={tmp_path}')
  assert (status, 'Traceback' in stderr) == (2, False), stderr
  assert stderr.strip().splitlines()[-1].startswith(message.format(file=tmp_path / 'file'))


def test_evaluate_checks_the_config_file_first(tmp_path):
  config_file = tmp_path / 'my_config.py'
  config_file.write_text('from configs import quickstart\n\n\ndef get_config():\n'
                         '  config = quickstart.get_config()\n'
                         '  config.test.flipp = True\n  return config\n')
  status, stderr = _run_script('evaluate.py', f'--config={config_file}',
                               f'--checkpoint={tmp_path / "no_such_checkpoint"}')
  assert status == 2
  assert stderr.strip().splitlines()[-1].startswith(
      'error: Unknown config key config.test.flipp (did you mean config.test.flip?)')
  assert 'Traceback' not in stderr


# ------------------------------------------------------------ checkpoints of another model


def test_resuming_a_workdir_of_another_model_lists_the_shapes(tmp_path):
  workdir = str(tmp_path / 'workdir')
  trained = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  tx = optimizer.create_optimizer(trained.optimizer, 2)
  shapes = jax.eval_shape(lambda: train_step.create_train_state(
      build_model(trained.model), tx, jax.random.PRNGKey(0), (1, 32, 32, 3)))
  state = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), shapes)  # no compile
  latest, _ = checkpoint.managers(workdir)
  checkpoint.save_state(latest, 1, jax_utils.replicate(state))
  latest.wait_until_finished()
  (tmp_path / 'workdir' / 'config.json').write_text(trained.to_json_best_effort())
  other = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  other.model.channels = 16  # tiny_config's PSP head has 8

  with pytest.raises(ValueError, match=(
      rf'The checkpoint to resume, {re.escape(workdir)}/checkpoints \(step 1\), does not fit '
      r'the model config\.model builds \(6 arrays\):\n(.*\n)*  '
      r'params/decode_head/conv_seg/kernel: checkpoint \(1, 1, 8, 10\), model \(1, 1, 16, 10\)\n'
      r'(.*\n)*Train with the config in its config\.json')):
    train_loop.train_and_evaluate(other, workdir)
  # Found before the run wrote anything: the config it was trained with is still there.
  assert json.loads((tmp_path / 'workdir' / 'config.json').read_text())['model']['channels'] == 8


def test_evaluate_with_a_checkpoint_of_another_model_lists_the_shapes(tmp_path):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  variables = checkpoint.variable_shapes(build_model(config.model))
  variables = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), variables)
  path = checkpoint.save_variables(tmp_path / 'converted', variables)
  status, stderr = _run_script(
      'evaluate.py', '--config=tests/tiny_config.py', '--config.model.channels=16',
      f'--config.dataset.data_dir={tmp_path / "tfds"}',
      f'--checkpoint={path}')
  assert (status, 'Traceback' in stderr) == (2, False)
  last = stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {path} does not fit the model config.model builds (6 arrays):')
  assert 'params/decode_head/conv_seg/kernel: checkpoint (1, 1, 8, 10), model (1, 1, 16, 10)' in last
  assert not (tmp_path / 'tfds').exists()  # stopped before reading any data


# ------------------------------------------------------------------ workdir and devices


@pytest.mark.parametrize('where', ['is_a_file', 'below_a_file'])
def test_workdir_that_cannot_be_written_is_named(tmp_path, where):
  (tmp_path / 'file').write_text('')
  workdir = tmp_path / 'file' if where == 'is_a_file' else tmp_path / 'file' / 'run'
  with pytest.raises(errors.InputError,
                     match=rf'--workdir={re.escape(str(workdir))} is not a writable '
                     r'folder \(.*\): checkpoints, TensorBoard logs and config\.json go '
                     r'there') as error:
    train_loop.train_and_evaluate(tiny_config.for_run(str(tmp_path / 'tfds'), steps=2), str(workdir))
  assert error.type is errors.InputError  # not the bare FileExistsError / NotADirectoryError
  assert not (tmp_path / 'tfds').exists()  # before any dataset work


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes to read-only folders')
def test_read_only_workdir_is_named(tmp_path):
  workdir = tmp_path / 'read_only'
  workdir.mkdir(mode=0o500)
  with pytest.raises(errors.InputError,
                     match=rf'--workdir={re.escape(str(workdir))} is not a writable '
                     r'folder \(Permission denied\)'):
    train_loop.train_and_evaluate(tiny_config.for_run(str(tmp_path / 'tfds'), steps=2), str(workdir))


def test_batch_size_not_divisible_by_the_devices_fails_before_any_work(tmp_path):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.batch_size = 6
  assert jax.device_count() == 4  # tests/conftest.py
  with pytest.raises(ValueError, match=r'config\.batch_size=6 must be divisible by the 4 devices'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists() and not (tmp_path / 'tfds').exists()


def test_a_ctrl_c_the_train_loop_does_not_catch_is_one_line_and_status_130():
  """Before training starts, or the second one during it (the first saves: test_preemption)."""
  code = ('from psp_jax.tools import cli\n'
          'def main(argv):\n  raise KeyboardInterrupt\n'
          'cli.run(main)\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 130, result.stderr
  assert result.stderr.strip().splitlines() == [
      'Stopped by Ctrl-C: nothing saved since the last checkpoint (rerun the same command to '
      'resume from it).']


# ---------------------------------------------------------------- reading tools do not write


def test_reading_a_checkpoint_never_creates_folders(tmp_path):
  missing = tmp_path / 'mistyped'
  with pytest.raises(FileNotFoundError, match='no such folder'):
    checkpoint.load_trained_variables(str(missing))
  assert not missing.exists()
  empty = tmp_path / 'empty'
  empty.mkdir()
  for which in ('best', 'latest'):
    with pytest.raises(FileNotFoundError, match='No checkpoint in'):
      checkpoint.load_trained_variables(str(empty), which)
  assert not list(empty.iterdir())
  (empty / 'checkpoints').mkdir()  # trained without evaluations: no best/
  with pytest.raises(FileNotFoundError, match=r'best \(it is saved at evaluations, config\.'
                                              r'eval_every_steps\): --which=latest takes'):
    checkpoint.load_trained_variables(str(empty))
  assert os.listdir(empty) == ['checkpoints']


def test_checkpoint_flag_given_a_training_workdir_says_to_use_workdir(tmp_path):
  (tmp_path / 'checkpoints').mkdir()
  with pytest.raises(errors.InputError, match=r'is a training workdir, not a folder of '
                                              r'variables: give --workdir='):
    checkpoint.load_variables(str(tmp_path))


def test_evaluate_with_a_mistyped_workdir_is_one_line_and_writes_nothing(tmp_path):
  status, stderr = _run_script('evaluate.py', '--config=configs/quickstart.py',
                               f'--workdir={tmp_path / "mistyped"}')
  assert (status, 'Traceback' in stderr) == (2, False), stderr
  assert stderr.strip().splitlines()[-1] == f'error: --workdir={tmp_path / "mistyped"}: no such folder.'
  assert not list(tmp_path.iterdir())


def test_an_image_too_large_to_decode_is_refused_from_its_header(tmp_path):
  """A 20000x20000 PNG (PIL's decompression-bomb size) is refused before any pixel is read."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  path = tmp_path / 'huge.png'
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 20000, 20000,
                                                                       8, 2, 0, 0, 0))
                   + chunk(b'IEND', b''))
  with pytest.raises(errors.InputError, match=r'huge.png: .*400000000 pixels, more than '
                                              r'--max_pixels=40000000'):
    images.read_rgb(str(path), 40_000_000)


def test_predict_with_out_a_file_is_one_line_before_any_work(tmp_path):
  out = tmp_path / 'masks'
  out.write_text('')
  status, stderr = _run_script('predict.py', '--config=tests/tiny_config.py',
                               f'--checkpoint={tmp_path / "none"}', f'--out={out}',
                               str(tmp_path / 'photo.png'))
  assert status == 2 and stderr.strip().splitlines()[-1] == (
      f'error: --out={out} is a file: give a folder (made if missing).'), stderr[-2000:]


def test_a_full_disk_at_a_save_is_one_error_naming_the_last_intact_checkpoint(tmp_path,
                                                                            monkeypatch):
  """The disk fills while step 2 is saved (Orbax's temporary folder half written)."""
  import errno  # pylint: disable=g-import-not-at-top
  save_state = checkpoint.save_state

  def fill_the_disk_at_step_2(manager, step, state, metrics=None, digests=None):
    if step == 2 and str(manager.directory).endswith('checkpoints'):
      (tmp_path / 'workdir' / 'checkpoints' / '2.orbax-checkpoint-tmp-1').mkdir()
      raise OSError(errno.ENOSPC, 'No space left on device')
    return save_state(manager, step, state, metrics, digests)

  monkeypatch.setattr(checkpoint, 'save_state', fill_the_disk_at_step_2)
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=3)
  config.update(checkpoint_every_steps=1, eval_every_steps=0, num_preview_images=0)
  workdir = tmp_path / 'workdir'
  with pytest.raises(errors.InputError, match=re.escape(
      f'No space left on the device of {workdir}: step 2 could not be saved. The last intact '
      f'checkpoint is step 1 in {workdir / "checkpoints"}; free space and rerun')):
    train_loop.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1']  # no partial save left
  monkeypatch.setattr(checkpoint, 'save_state', save_state)
  train_loop.train_and_evaluate(config, str(workdir))  # resumes from step 1
  assert sorted(os.listdir(workdir / 'checkpoints'))[-1] == '3'
