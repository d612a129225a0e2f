"""Every config key and value checked before any work (psp_jax.config.config_check), in one
error naming the key, the value and what is allowed."""

import re

import pytest

from configs import ade20k as ade20k_config
from configs import cityscapes as cityscapes_config
from configs import quickstart
from configs import voc12_aug as voc_config
from psp_jax.base import errors
from psp_jax.config import config_check
from psp_jax.training import train_loop

import tiny_config


def test_unknown_key_in_a_config_file_names_it_and_the_closest_known_key(tmp_path):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.augmnet = config.augment  # a user config with a typo: training would ignore it
  config.optimizer.learnin_rate = 0.1
  with pytest.raises(ValueError, match=r'Unknown config keys config\.augmnet \(did you mean '
                     r'config\.augment\?\), config\.optimizer\.learnin_rate \(did you mean '
                     r'config\.optimizer\.learning_rate\?\)\. .*psp_jax/config/__init__\.py'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists() and not (tmp_path / 'tfds').exists()


def test_a_key_at_the_wrong_level_is_unknown_too(tmp_path):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.learning_rate = 0.1  # belongs in config.optimizer
  with pytest.raises(ValueError, match=r'config\.learning_rate \(did you mean '
                     r'config\.optimizer\.learning_rate\?\)'):
    config_check.check_config(config)


@pytest.mark.parametrize('module', [ade20k_config, voc_config, cityscapes_config, quickstart],
                         ids=lambda m: m.__name__)
def test_every_shipped_config_passes_the_check(module):
  config_check.check_config(module.get_config())


def test_num_classes_other_than_the_datasets_is_refused(tmp_path):
  config = tiny_config.for_run(str(tmp_path / 'tfds'), steps=2)
  config.model.num_classes = 5  # synthetic scenes have 10: labels 5..9 would be out of range
  with pytest.raises(ValueError, match=r'config\.model\.num_classes=5, but synthetic_scenes/tiny '
                     r'has 10 classes .* Set --config\.model\.num_classes=10'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


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
