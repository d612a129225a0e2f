"""Bad input gives one clear error, early, naming the value, the file and the fix (issue #6).

Each case runs the real entry point (train_and_evaluate, the tf.data pipeline, train.py /
evaluate.py) on real files: TFDS datasets prepared on disk, Orbax checkpoints, config files.
"""

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile

import jax
from flax import jax_utils
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import ade20k as ade20k_config
from configs import cityscapes as cityscapes_config
from configs import quickstart
from configs import voc12_aug as voc_config
from psp_jax.base import errors, images
from psp_jax.config import config_check
from psp_jax.data import catalog, checks, input_pipeline
from psp_jax.data.builders import ade20k, cityscapes
from psp_jax.data.dataset import Dataset
from psp_jax.data.features import segmentation_features
from psp_jax.models import build_model
from psp_jax.training import checkpoint, optimizer, train_loop, train_step
from test_cityscapes import fake_frame
from test_train import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_script(script, *args):
  """`python script args` from the repository root, as a user runs it; (exit status, stderr)."""
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
  result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  return result.returncode, result.stderr


def _encode(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


# ------------------------------------------------------------------------- config keys


def test_unknown_key_in_a_config_file_names_it_and_the_closest_known_key(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.augmnet = config.augment  # a user config with a typo: training would ignore it
  config.optimizer.learnin_rate = 0.1
  with pytest.raises(ValueError, match=r'Unknown config keys config\.augmnet \(did you mean '
                     r'config\.augment\?\), config\.optimizer\.learnin_rate \(did you mean '
                     r'config\.optimizer\.learning_rate\?\)\. .*psp_jax/config/__init__\.py'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists() and not (tmp_path / 'tfds').exists()


def test_a_key_at_the_wrong_level_is_unknown_too(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.learning_rate = 0.1  # belongs in config.optimizer
  with pytest.raises(ValueError, match=r'config\.learning_rate \(did you mean '
                     r'config\.optimizer\.learning_rate\?\)'):
    config_check.check_config(config)


@pytest.mark.parametrize('module', [ade20k_config, voc_config, cityscapes_config, quickstart],
                         ids=lambda m: m.__name__)
def test_every_shipped_config_passes_the_check(module):
  config_check.check_config(module.get_config())


@pytest.mark.parametrize('crop, resize_scale, scale_range, warned', [
    ((48, 256), None, (1.0, 1.0), None),          # the scenes' own size: no padding
    ((64, 256), None, (1.0, 1.0), r'at least 25% of each crop'),
    ((96, 512), None, (0.5, 2.0), None),          # the largest rescale fills it
    ((96, 512), (128, 24), (1.0, 1.0), r'is at most 24x128 after rescaling .* at least 94%'),
])
def test_a_crop_larger_than_the_images_warns_naming_both(tmp_path, crop, resize_scale,
                                                         scale_range, warned):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.augment.update(crop_size=crop, resize_scale=resize_scale, scale_range=scale_range)
  data = Dataset(config.dataset)
  data.builder.download_and_prepare()
  message = train_loop.warn_if_every_crop_is_padded(config, data)
  if warned is None:
    assert message is None
  else:
    assert re.search(r'config\.augment\.crop_size=\(\d+, \d+\) is larger than the training '
                     r'images: the first, 48x256, .*' + warned, message), message


def test_num_classes_other_than_the_datasets_is_refused(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.model.num_classes = 5  # synthetic scenes have 10: labels 5..9 would be out of range
  with pytest.raises(ValueError, match=r'config\.model\.num_classes=5, but synthetic_scenes/tiny '
                     r'has 10 classes .* Set --config\.model\.num_classes=10'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


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


@pytest.mark.parametrize('key, value, message', [
    ('checkpoint_every_steps', 0, 'config.checkpoint_every_steps=0: use a whole number >= 1.'),
    ('batch_size', 0, 'config.batch_size=0: use a whole number >= 1.'),
    ('batch_size', -4, 'config.batch_size=-4: use a whole number >= 1.'),
    ('num_train_steps', 0, 'config.num_train_steps=0: use a whole number >= 1.'),
    ('eval_every_steps', -1, 'config.eval_every_steps=-1: use a whole number >= 0 (0: none).'),
    ('aux_weight', -0.4, 'config.aux_weight=-0.4: use a number >= 0.'),
    ('optimizer.momentum', 1.0, 'config.optimizer.momentum=1.0: use a number in [0, 1).'),
    ('optimizer.warmup_steps', 800, 'config.optimizer.warmup_steps=800 must be below '
                                    'config.num_train_steps=800.'),
    ('augment.crop_size', (64,), 'config.augment.crop_size=(64,): use (height, width)'),
    ('augment.scale_range', (2.0, 0.5), 'config.augment.scale_range=(2.0, 0.5): use (low, high)'),
    ('augment.blur_prob', 1.5, 'config.augment.blur_prob=1.5: use a probability in [0, 1].'),
    ('test.scales', (), 'config.test.scales=(): use one or more numbers > 0'),
])
def test_every_config_value_is_checked_before_any_work(key, value, message):
  config = quickstart.get_config()
  parent, _, leaf = key.rpartition('.')
  (config[parent] if parent else config)[leaf] = value
  with pytest.raises(errors.InputError, match=re.escape(message)):
    config_check.check_config(config)


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


# ---------------------------------------------------------------- dataset not prepared


def test_dataset_not_prepared_and_prepare_off_says_how_to_prepare(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.dataset.prepare = False
  with pytest.raises(FileNotFoundError, match=(
      rf'synthetic_scenes/tiny is not prepared in {re.escape(str(tmp_path / "tfds"))}, and '
      r'config\.dataset\.prepare=False\. Set --config\.dataset\.prepare=True')):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


def test_ade20k_not_prepared_says_where_its_archive_goes(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.dataset.update(name='ade20k', prepare=False)
  config.model.num_classes = 150
  with pytest.raises(FileNotFoundError, match=r'(?s)ade20k is not prepared.*'
                     r'put the unmodified `ADEChallengeData2016\.zip`'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))


@pytest.mark.parametrize('name, num_classes, archives', [
    ('voc12_aug', 21, ('VOCtrainval_11-May-2012.tar', 'benchmark.tgz')),
    (cityscapes.TFDS_NAME, 19, ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip'))])
def test_missing_manual_archives_are_named_with_the_folder_they_go_in(tmp_path, name,
                                                                      num_classes, archives):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.dataset.name = name
  config.model.num_classes = num_classes
  manual_dir = tmp_path / 'tfds' / 'downloads' / 'manual'
  with pytest.raises(FileNotFoundError, match=rf'{re.escape(str(manual_dir))} lacks '
                     rf'{re.escape(archives[0])}, {re.escape(archives[1])}\. Put them there'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  manual_dir.mkdir(parents=True)
  (manual_dir / archives[0]).write_bytes(b'')  # one of the two is there
  with pytest.raises(FileNotFoundError, match=rf'{re.escape(str(manual_dir))} lacks '
                     rf'{re.escape(archives[1])}\. Put it there'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


def test_unreachable_ade20k_download_says_where_to_put_the_archive_at_once(tmp_path,
                                                                           monkeypatch):
  # A closed port refuses at once, as a host without network does; TFDS itself would retry
  # an http download for minutes.
  monkeypatch.setattr(ade20k, 'URL', 'http://127.0.0.1:1/ADEChallengeData2016.zip')
  start = time.monotonic()
  with pytest.raises(errors.InputError, match=(
      rf'^Put ADEChallengeData2016\.zip, not extracted, in '
      rf'{re.escape(str(tmp_path / "downloads" / "manual"))} .*127\.0\.0\.1:1 cannot be '
      'reached')):
    ade20k.Ade20k(data_dir=tmp_path).download_and_prepare()
  assert time.monotonic() - start < 15


# -------------------------------------------------- per-example checks in the pipeline


class BadExamples(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """psp_jax's own format (features.py): per split, one good example and four bad ones.

  A bad example holds what our builders refuse to write but a dataset prepared otherwise
  may: labels outside synthetic_scenes' 10 classes, a label of another size than its image,
  or an image file that does not decode. Four, so that each of the 4 simulated devices'
  training shards has one.
  """

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n)
                     for n in ('label_values', 'label_size', 'corrupt_image')]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=segmentation_features())

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(), 'validation': self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (12, 16, 3), np.uint8)
    label = rng.randint(0, 8, (12, 16, 1)).astype(np.uint8)
    label[0, 0] = 255  # ignore is a valid value
    yield 'good', {'image': _encode(image, 'JPEG'), 'segmentation_mask': label,
                   'file_name': 'good.jpg'}
    for index in range(4):
      bad = {'image': _encode(image, 'JPEG'), 'segmentation_mask': label.copy(),
             'file_name': f'bad_{index}.jpg'}
      if self.builder_config.name == 'label_values':
        bad['segmentation_mask'][1, :3, 0] = (12, 200, 12)
      elif self.builder_config.name == 'label_size':
        bad['segmentation_mask'] = label[:, :10]
      else:
        bad['image'] = bad['image'][:len(bad['image']) // 2]  # a truncated download
      yield f'bad_{index}', bad


def _bad_examples(tmp_path, name):
  builder = BadExamples(config=name, data_dir=tmp_path / 'tfds')
  builder.download_and_prepare()
  return builder


def _readers(builder):
  """Each way the pipeline reads a split: training, and evaluation (train.py and evaluate.py)."""
  decode = checks.decoder(10)  # the scenes' classes, our format
  augment = dict(quickstart.get_config().augment, crop_size=(8, 8))

  def batch():
    ds = input_pipeline.create_split(builder, 'train', augment, 1, decode=decode)
    return next(checks.name_corrupt_images(tfds.as_numpy(ds), builder, 'train'))

  def evaluate():  # as evaluator.evaluate_split reads examples
    examples = tfds.as_numpy(builder.as_dataset(split='validation').map(decode))
    return list(checks.name_corrupt_images(examples, builder, 'validation'))
  return {'train': batch, 'evaluate': evaluate}


def test_label_values_outside_the_classes_name_the_file_and_the_values(tmp_path):
  builder = _bad_examples(tmp_path, 'label_values')
  for name, read in _readers(builder).items():
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
        r'bad_\d\.jpg: label values \[12 200\] are neither class ids in \[0, 10\) nor the '
        r'ignore label 255')):
      read()
      pytest.fail(f'{name} read the bad labels')


def test_label_of_another_size_than_its_image_names_the_file_and_sizes(tmp_path):
  builder = _bad_examples(tmp_path, 'label_size')
  for name, read in _readers(builder).items():
    with pytest.raises(tf.errors.InvalidArgumentError, match=(
        r'bad_\d\.jpg: label size \[12 10\] differs from image size \[12 16\]')):
      read()
      pytest.fail(f'{name} read the label of another size')


def test_good_examples_pass_the_checks_unchanged(tmp_path):
  builder = _bad_examples(tmp_path, 'label_values')
  decode = checks.decoder(10)
  stored = builder.as_dataset(split='train').filter(lambda ex: ex['file_name'] == 'good.jpg')
  [(example, (image, label))] = tfds.as_numpy(stored.map(lambda ex: (ex, decode(ex))))
  np.testing.assert_array_equal(image, example['image'])
  np.testing.assert_array_equal(label, example['segmentation_mask'])
  assert label[0, 0, 0] == 255


def _cityscapes_config(data_dir=None):
  dataset = tiny_config(data_dir, steps=2).dataset
  dataset.update(name=cityscapes.TFDS_NAME, prepare=True)
  return dataset


def test_cityscapes_labels_are_checked_after_mapping_ids_to_train_ids():
  label_ids = np.full((4, 6, 1), 33, np.uint8)  # bicycle's id: 33 >= 19, train id 18
  label_ids[0, 0] = 0  # unlabeled -> 255
  example = {'image_left': tf.zeros((4, 6, 3), tf.uint8), 'segmentation_label': label_ids,
             'image_id': tf.constant('aachen_000000_000019')}
  decode = Dataset(_cityscapes_config()).decode
  _, label = decode(example)
  assert label.numpy()[0, 0, 0] == 255 and (label.numpy()[1:] == 18).all()
  example['image_left'] = tf.zeros((4, 5, 3), tf.uint8)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'aachen_000000_000019: label size \[4 6\] differs'):
    decode(example)


def test_corrupt_image_names_the_file_not_a_bare_decode_error(tmp_path):
  builder = _bad_examples(tmp_path, 'corrupt_image')
  for name, read in _readers(builder).items():
    split = 'validation' if name == 'evaluate' else 'train'
    with pytest.raises(ValueError, match=(
        rf'bad_examples/corrupt_image/1\.0\.0 {split}: 4 stored image\(s\) do not decode: '
        r'bad_0\.jpg \(image\), bad_1\.jpg \(image\), bad_2\.jpg \(image\), bad_3\.jpg '
        r'\(image\)\. Replace the damaged')) as error:
      read()
    assert isinstance(error.value.__cause__, tf.errors.InvalidArgumentError)


def _damage(archive, member, damaged):
  """Rewrites zip `archive` with `member`'s bytes replaced by damaged(bytes)."""
  with zipfile.ZipFile(archive) as zf:
    members = {name: zf.read(name) for name in zf.namelist()}
  assert member in members
  members[member] = damaged(members[member])
  with zipfile.ZipFile(archive, 'w') as zf:
    for name, data in members.items():
      zf.writestr(name, data)


@pytest.mark.parametrize('member, damaged, message', [
    ('images/validation/ADE_val_00000002.jpg', lambda b: b[:len(b) // 2],
     r'ADE_val_00000002\.jpg: does not decode as an image \(.*\)\. Replace it'),
    ('annotations/training/ADE_train_00000003.png', lambda b: b[:len(b) // 2],
     r'ADE_train_00000003\.png does not decode'),
    ('images/training/ADE_train_00000001.jpg', lambda b: b'not an image',
     r'ADE_train_00000001\.jpg: does not decode as an image \(cannot identify'),
])
def test_a_damaged_ade20k_file_fails_preparation_naming_it(tmp_path, member, damaged, message):
  """Preparing decodes every image and annotation once: a damaged file never reaches a
  training run, where it would stop the stream hours in."""
  from test_ade20k import write_fake_archive
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  write_fake_archive(manual_dir / ade20k.ARCHIVE)
  _damage(manual_dir / ade20k.ARCHIVE, f'{ade20k.ROOT}/{member}', damaged)
  builder = ade20k.Ade20k(data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(errors.InputError, match=message):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))


def _write_cityscapes_archives(manual_dir, corrupt):
  """The two official zips: 4 train frames (one per simulated device), 1 val, 1 test frame;
  the image of frame `corrupt` is cut short."""
  manual_dir.mkdir(parents=True)
  with zipfile.ZipFile(manual_dir / catalog.CITYSCAPES.manual[0], 'w') as images, \
       zipfile.ZipFile(manual_dir / catalog.CITYSCAPES.manual[1], 'w') as labels:
    for k, split in enumerate(('train',) * 4 + ('val', 'test')):
      image, label = fake_frame(k)
      stem = f'aachen_{k:06d}_000019'
      png = tf.io.encode_png(image).numpy()
      images.writestr(f'leftImg8bit/{split}/aachen/{stem}_leftImg8bit.png',
                      png[:len(png) // 2] if k == corrupt else png)
      labels.writestr(f'gtFine/{split}/aachen/{stem}_gtFine_labelIds.png',
                      tf.io.encode_png(label).numpy())


def test_corrupt_image_fails_preparation_naming_the_file(tmp_path):
  # TFDS's Cityscapes builder stores the PNGs as they come: train.py decodes every example
  # once right after preparing, before any training step.
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.dataset.name = cityscapes.TFDS_NAME
  config.model.num_classes = 19
  _write_cityscapes_archives(tmp_path / 'tfds' / 'downloads' / 'manual', corrupt=0)
  with pytest.raises(errors.InputError, match=(
      r'cityscapes/semantic_segmentation/1\.0\.0: 1 stored image\(s\) would stop training: '
      r'train: aachen_000000_000019 \(image_left\)\. Replace the damaged')):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  # Deleted, so the next run prepares and checks it again instead of training on it.
  assert not tfds.builder(cityscapes.TFDS_NAME, data_dir=str(tmp_path / 'tfds')).is_prepared()
  assert not os.listdir(tmp_path / 'workdir' / 'checkpoints')  # no step was trained


def test_cityscapes_label_of_another_size_fails_preparation(tmp_path):
  """TFDS's Cityscapes features declare 1024x2048: a label map of another size is stored
  unread, and decoding it (as training would) fails."""
  manual_dir = tmp_path / 'tfds' / 'downloads' / 'manual'
  _write_cityscapes_archives(manual_dir, corrupt=None)
  _damage(manual_dir / catalog.CITYSCAPES.manual[1],
          'gtFine/val/aachen/aachen_000004_000019_gtFine_labelIds.png',
          lambda _: tf.io.encode_png(fake_frame(4)[1][:, :-8]).numpy())  # 8 columns short
  data = Dataset(_cityscapes_config(str(tmp_path / 'tfds')))
  with pytest.raises(errors.InputError, match=r'1 stored image\(s\) would stop training: '
                     r'validation: aachen_000004_000019 \(segmentation_label\)\.'):
    data.prepare()


# ------------------------------------------------------------ checkpoints of another model


def test_resuming_a_workdir_of_another_model_lists_the_shapes(tmp_path):
  workdir = str(tmp_path / 'workdir')
  trained = tiny_config(str(tmp_path / 'tfds'), steps=2)
  tx = optimizer.create_optimizer(trained.optimizer, 2)
  shapes = jax.eval_shape(lambda: train_step.create_train_state(
      build_model(trained.model), tx, jax.random.PRNGKey(0), (1, 32, 32, 3)))
  state = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), shapes)  # no compile
  latest, _ = checkpoint.managers(workdir)
  checkpoint.save_state(latest, 1, jax_utils.replicate(state))
  latest.wait_until_finished()
  (tmp_path / 'workdir' / 'config.json').write_text(trained.to_json_best_effort())
  other = tiny_config(str(tmp_path / 'tfds'), steps=2)
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
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
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
    train_loop.train_and_evaluate(tiny_config(str(tmp_path / 'tfds'), steps=2), str(workdir))
  assert error.type is errors.InputError  # not the bare FileExistsError / NotADirectoryError
  assert not (tmp_path / 'tfds').exists()  # before any dataset work


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes to read-only folders')
def test_read_only_workdir_is_named(tmp_path):
  workdir = tmp_path / 'read_only'
  workdir.mkdir(mode=0o500)
  with pytest.raises(errors.InputError,
                     match=rf'--workdir={re.escape(str(workdir))} is not a writable '
                     r'folder \(Permission denied\)'):
    train_loop.train_and_evaluate(tiny_config(str(tmp_path / 'tfds'), steps=2), str(workdir))


def test_batch_size_not_divisible_by_the_devices_fails_before_any_work(tmp_path):
  config = tiny_config(str(tmp_path / 'tfds'), steps=2)
  config.batch_size = 6
  assert jax.device_count() == 4  # tests/conftest.py
  with pytest.raises(ValueError, match=r'config\.batch_size=6 must be divisible by the 4 devices'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists() and not (tmp_path / 'tfds').exists()


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
  config = tiny_config(str(tmp_path / 'tfds'), steps=3)
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
