"""One run's data (psp_jax.data.dataset.Dataset): a dataset that is not prepared, and the
per-example checks of bad data on every path that reads it, each naming the file."""

import io
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import quickstart
from psp_jax.data import checks, input_pipeline
from psp_jax.data.builders import cityscapes
from psp_jax.data.features import segmentation_features
from psp_jax.training import train_loop

import tiny_config


def _encode(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def test_dataset_not_prepared_and_prepare_off_says_how_to_prepare(tmp_path):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.dataset.prepare = False
  with pytest.raises(FileNotFoundError, match=(
      rf'synthetic_scenes/tiny is not prepared in {re.escape(str(tmp_path / "tfds"))}, and '
      r'config\.dataset\.prepare=False\. Set --config\.dataset\.prepare=True')):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


@pytest.mark.parametrize('name, num_classes, archives', [
    ('voc12_aug', 21, ('VOCtrainval_11-May-2012.tar', 'benchmark.tgz')),
    (cityscapes.TFDS_NAME, 19, ('leftImg8bit_trainvaltest.zip', 'gtFine_trainvaltest.zip'))])
def test_missing_manual_archives_are_named_with_the_folder_they_go_in(tmp_path, name,
                                                                      num_classes, archives):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
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
