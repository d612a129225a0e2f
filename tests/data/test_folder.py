"""Your own data: a folder in mmseg's layout, written here as a user would, trained on,
evaluated and predicted on; every bad file is one error naming it."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import evaluate
from configs import folder as folder_config
from psp_jax.base import errors, images
from psp_jax.data import catalog, classes
from psp_jax.data.dataset import Dataset
from psp_jax.data.builders import folder, synthetic_scenes
from psp_jax.models.pspnet import build_model
from psp_jax.training import checkpoint, train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = synthetic_scenes.CLASS_NAMES
PALETTE = [(10 * i, 255 - 10 * i, 7 * i) for i in range(len(NAMES))]
TINY_MODEL = dict(depth=18, stem_widths=(4, 4, 8), base_width=4, ppm_channels=4, channels=8,
                  aux_channels=4)
TINY_FLAGS = ['--config.model.depth=18', '--config.model.stem_widths=(4,4,8)',
              '--config.model.base_width=4', '--config.model.ppm_channels=4',
              '--config.model.channels=8', '--config.model.aux_channels=4']


def palette_png(label: np.ndarray, path) -> None:
  """A label map as annotation tools save it: a palette ('P') PNG whose indices are class ids."""
  image = Image.frombytes('P', label.shape[::-1], np.ascontiguousarray(label).tobytes())
  image.putpalette([c for colour in PALETTE for c in colour])
  image.save(path)


def write_folder(root, counts=(('train', 4), ('val', 2)), with_classes_json=True):
  """synthetic scenes as ROOT/images/{split}/NAME.jpg + ROOT/annotations/{split}/NAME.png."""
  for split, count in counts:
    os.makedirs(root / 'images' / split, exist_ok=True)
    os.makedirs(root / 'annotations' / split, exist_ok=True)
    for i in range(count):
      image, label = synthetic_scenes.render_scene(1000 * (split == 'val') + i)
      Image.fromarray(image).save(root / 'images' / split / f'scene{i}.jpg', quality=95)
      palette_png(label, root / 'annotations' / split / f'scene{i}.png')
  if with_classes_json:
    (root / classes.CLASSES_FILE).write_text(json.dumps({'classes': NAMES, 'palette': PALETTE}))
  return root


def dataset_config(root, data_dir, **changes):
  config = folder_config.get_config().dataset
  config.update(root=str(root), data_dir=str(data_dir), **changes)
  return config


def prepare(root, data_dir, **changes):
  builder = Dataset(dataset_config(root, data_dir, **changes)).builder
  builder.download_and_prepare()
  return builder


def stored(builder, split='train'):
  return {example['file_name'].decode(): (example['image'], example['segmentation_mask'][..., 0])
          for example in tfds.as_numpy(builder.as_dataset(split=split))}


def test_folder_is_prepared_as_stored_and_once_per_change(tmp_path):
  root = write_folder(tmp_path / 'data')
  builder = prepare(root, tmp_path / 'tfds')
  assert builder.info.splits['train'].num_examples == 4
  assert builder.info.splits['validation'].num_examples == 2
  examples = stored(builder)
  image, label = examples[os.path.join('images', 'train', 'scene1.jpg')]
  # The JPEG's own bytes are stored: TFDS decodes them as tf.io does.
  jpeg = (root / 'images/train/scene1.jpg').read_bytes()
  np.testing.assert_array_equal(image, tf.io.decode_jpeg(jpeg).numpy())
  np.testing.assert_array_equal(label, synthetic_scenes.render_scene(1)[1])
  # Unchanged: the same prepared data. A file added: prepared again, under another name.
  assert Dataset(dataset_config(root, tmp_path / 'tfds')).builder.data_dir == builder.data_dir
  write_folder(root, counts=(('train', 5),))
  again = prepare(root, tmp_path / 'tfds')
  assert again.data_dir != builder.data_dir
  assert again.info.splits['train'].num_examples == 5


def test_train_evaluate_and_predict_on_a_folder(tmp_path):
  root = write_folder(tmp_path / 'data')
  config = folder_config.get_config()
  config.dataset.update(root=str(root), data_dir=str(tmp_path / 'tfds'))
  config.model.update(num_classes=len(NAMES), **TINY_MODEL)
  config.augment.update(crop_size=(32, 32), resize_scale=None, photometric=False)
  config.test.update(resize='none', size_divisor=None)
  config.update(batch_size=4, num_train_steps=2, log_every_steps=1, eval_every_steps=2,
                checkpoint_every_steps=2, num_preview_images=1)
  config.optimizer.warmup_steps = 1
  workdir = tmp_path / 'workdir'
  trained = train_loop.train_and_evaluate(config, str(workdir))

  variables, _ = checkpoint.load_trained_variables(str(workdir), 'latest')
  metrics, table, _ = evaluate.evaluate(config, build_model(config.model), variables, 'validation')
  assert metrics['mIoU'] == pytest.approx(trained['mIoU'])
  assert all(name in table for name in NAMES)  # classes.json's names

  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'predict.py'), '--config=configs/folder.py',
       f'--config.dataset.root={root}', f'--config.dataset.data_dir={tmp_path / "tfds"}',
       f'--config.model.num_classes={len(NAMES)}', *TINY_FLAGS,
       '--config.test.resize=none', f'--workdir={workdir}',
       str(root / 'images' / 'val' / 'scene0.jpg'), f'--out={tmp_path / "out"}'],
      cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  mask = np.asarray(Image.open(tmp_path / 'out' / 'scene0.jpg_mask.png'))
  assert {tuple(c) for c in mask.reshape(-1, 3)} <= set(PALETTE)  # the folder's own colours


def test_class_names_come_from_the_config_or_classes_json(tmp_path):
  root = write_folder(tmp_path / 'data', with_classes_json=False)
  with pytest.raises(errors.InputError, match=rf'{tmp_path / "data"} has no classes\.json'):
    catalog.class_names_and_palette(dataset_config(root, tmp_path))
  names, palette = catalog.class_names_and_palette(dataset_config(root, tmp_path, classes=NAMES))
  assert names == NAMES and len(set(palette)) == len(NAMES)  # a fixed default palette
  (root / 'classes.json').write_text(json.dumps({'classes': NAMES, 'palette': PALETTE}))
  assert catalog.class_names_and_palette(dataset_config(root, tmp_path)) == (NAMES, tuple(PALETTE))


@pytest.mark.parametrize('mode', ['L', 'LA', 'RGBA', 'P', 'CMYK', 'I;16'])
def test_images_of_any_mode_become_rgb(tmp_path, mode):
  grey = (np.arange(12 * 10, dtype=np.uint8).reshape(12, 10) * 2)
  if mode == 'I;16':
    image = Image.fromarray(grey.astype('<u2') * 257)  # mode 'I;16'
    assert image.mode == 'I;16'
  else:
    image = Image.fromarray(np.repeat(grey[..., None], 3, -1))
    image = (image.convert('P', palette=Image.Palette.ADAPTIVE) if mode == 'P'
             else image.convert(mode))
  path = tmp_path / ('image.jpg' if mode == 'CMYK' else 'image.png')
  image.save(path)
  pixels, size = folder.read_image(str(path))
  assert pixels.shape == (12, 10, 3) and pixels.dtype == np.uint8 and size == (12, 10)
  tolerance = 6 if mode == 'CMYK' else 0  # a JPEG
  np.testing.assert_allclose(pixels[..., 0], grey, atol=tolerance)
  np.testing.assert_array_equal(images.read_rgb(str(path)), pixels)  # predict.py's reader


def test_exif_orientation_is_applied_and_the_label_must_match_the_shown_image(tmp_path):
  root = write_folder(tmp_path / 'data', counts=(('train', 1), ('val', 1)))
  image, label = synthetic_scenes.render_scene(0)
  image, label = image[:, :100], label[:, :100]  # 48 x 100
  exif = Image.Exif()
  exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 100 x 48
  Image.fromarray(image).save(root / 'images/train/scene0.jpg', exif=exif, quality=95)
  palette_png(np.rot90(label, -1).copy(), root / 'annotations/train/scene0.png')
  image_stored, label_stored = stored(prepare(root, tmp_path / 'tfds'))['images/train/scene0.jpg']
  assert image_stored.shape == (100, 48, 3)
  np.testing.assert_array_equal(label_stored, np.rot90(label, -1))

  palette_png(label, root / 'annotations/train/scene0.png')  # the stored, unrotated size
  with pytest.raises(errors.InputError, match=(
      r'annotations/train/scene0\.png is 48x100 \(height x width\) but .*images/train/'
      r'scene0\.jpg is 100x48 after its EXIF orientation')):
    prepare(root, tmp_path / 'tfds')


def test_rgb_labels_are_read_through_the_palette_and_other_colours_are_named(tmp_path):
  root = write_folder(tmp_path / 'data', counts=(('train', 1), ('val', 1)))
  label = synthetic_scenes.render_scene(0)[1]
  colours = np.array(PALETTE, np.uint8)[label]
  Image.fromarray(colours).save(root / 'annotations/train/scene0.png')
  np.testing.assert_array_equal(
      stored(prepare(root, tmp_path / 'tfds'))['images/train/scene0.jpg'][1], label)
  colours[5, 7] = (1, 2, 3)
  Image.fromarray(colours).save(root / 'annotations/train/scene0.png')
  with pytest.raises(errors.InputError, match=(r'annotations/train/scene0\.png: colours '
                                               r'\[\(1, 2, 3\)\] are not in the palette')):
    prepare(root, tmp_path / 'tfds')


def test_reduce_zero_label_reads_zero_as_ignore(tmp_path):
  root = write_folder(tmp_path / 'data', counts=(('train', 1), ('val', 1)))
  label = synthetic_scenes.render_scene(0)[1]
  palette_png(label, root / 'annotations/train/scene0.png')
  got = stored(prepare(root, tmp_path / 'tfds', reduce_zero_label=True))[
      'images/train/scene0.jpg'][1]
  np.testing.assert_array_equal(got, np.where(label == 0, 255, label - 1))


@pytest.mark.parametrize('case', ['image_without_label', 'label_without_image', 'size',
                                  'value', 'unreadable'])
def test_each_bad_file_is_one_error_naming_it(tmp_path, case):
  root = write_folder(tmp_path / 'data', counts=(('train', 2), ('val', 1)))
  label = synthetic_scenes.render_scene(1)[1]
  bad = {
      'image_without_label': ('annotations/train/scene1.png', None,
                              r'images/train/scene1\.jpg has no label'),
      'label_without_image': ('images/train/scene1.jpg', None,
                              r'annotations/train/scene1\.png has no image'),
      'size': ('annotations/train/scene1.png', label[:, :100],
               r'annotations/train/scene1\.png is 48x100 \(height x width\) but .*images/train/'
               r'scene1\.jpg is 48x256\.'),
      'value': ('annotations/train/scene1.png', np.where(label == 0, 12, label).astype(np.uint8),
                r'annotations/train/scene1\.png: label values \[12\] are neither class ids in '
                r'\[0, 10\)'),
      'unreadable': ('images/train/scene1.jpg', b'not a jpeg',
                     r'images/train/scene1\.jpg: not a readable image'),
  }
  path, content, message = bad[case]
  if content is None:
    os.remove(root / path)
  elif isinstance(content, bytes):
    (root / path).write_bytes(content)
  else:
    palette_png(content, root / path)
  with pytest.raises(errors.InputError, match=message):
    prepare(root, tmp_path / 'tfds')
  assert not (tmp_path / 'tfds' / 'folder').exists() or not any(
      (tmp_path / 'tfds' / 'folder').rglob('dataset_info.json'))  # nothing half-prepared


def test_train_without_a_root_or_with_the_wrong_class_count_says_what_to_set(tmp_path):
  config = folder_config.get_config()
  with pytest.raises(errors.InputError, match=r'needs --config\.dataset\.root=DIR'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  config.dataset.root = str(tmp_path / 'mistyped')
  with pytest.raises(errors.InputError, match=r'config\.dataset\.root=.*/mistyped: no such '
                                              r'folder'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  config.dataset.root = str(write_folder(tmp_path / 'data'))
  with pytest.raises(errors.InputError, match=r'config\.model\.num_classes=0, but folder has 10 '
                     r'classes .* Set --config\.model\.num_classes=10'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))


def test_binary_masks_saved_as_0_and_255_stop_preparation_naming_the_fix(tmp_path):
  root = tmp_path / 'data'
  for split in ('train', 'val'):
    os.makedirs(root / 'images' / split)
    os.makedirs(root / 'annotations' / split)
    for i in range(2):
      image, label = synthetic_scenes.render_scene(i)
      Image.fromarray(image).save(root / 'images' / split / f'{i}.jpg')
      Image.fromarray(np.where(label == 1, 255, 0).astype(np.uint8)).save(
          root / 'annotations' / split / f'{i}.png')
  with pytest.raises(errors.InputError, match=(
      r'annotations/train: every label map holds only 0 and 255, and 255 means ignore, so '
      r'class 1 would never be learnt.* Re-save them with 1 for the foreground')):
    prepare(root, tmp_path / 'tfds', classes=('background', 'building'), palette=None)
  for split in ('train', 'val'):  # re-saved: prepared
    for i in range(2):
      path = root / 'annotations' / split / f'{i}.png'
      Image.fromarray((np.asarray(Image.open(path)) // 255).astype(np.uint8)).save(path)
  prepare(root, tmp_path / 'tfds', classes=('background', 'building'), palette=None)


def test_classes_json_must_list_names_and_the_palette_error_names_the_file(tmp_path):
  root = write_folder(tmp_path / 'data', counts=(('train', 1), ('val', 1)))
  path = root / classes.CLASSES_FILE
  path.write_text(json.dumps({'classes': 'bgr'}))
  with pytest.raises(errors.InputError, match=r'classes.json: "classes" must be a list of '
                                              r"names, .* not 'bgr'"):
    catalog.class_names_and_palette(dataset_config(root, tmp_path / 'tfds'))
  path.write_text(json.dumps({'classes': NAMES, 'palette': PALETTE[:3]}))
  with pytest.raises(errors.InputError, match=r'classes.json: the palette of 3 colours'):
    catalog.class_names_and_palette(dataset_config(root, tmp_path / 'tfds'))


def test_an_empty_split_folder_is_named_as_empty(tmp_path):
  root = write_folder(tmp_path / 'data', counts=(('train', 1), ('val', 0)))
  with pytest.raises(errors.InputError, match=r'images/val has no \*\.jpg image: it is empty'):
    folder.pairs(str(root), 'val', '.jpg', '.png')
  (root / 'images' / 'val' / 'a.jpeg').write_bytes(b'')
  with pytest.raises(errors.InputError, match=r'it holds \.jpeg: set config\.dataset\.img_suffix'):
    folder.pairs(str(root), 'val', '.jpg', '.png')
