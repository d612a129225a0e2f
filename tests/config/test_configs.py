"""Every config loads, and every field can be overridden from the command line."""

import pytest

from configs import ade20k, ade20k_csail, camvid, cityscapes, folder, quickstart, voc12_aug
from psp_jax.evaluation import inference
from psp_jax.models.pspnet import build_model


def _leaf_types(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _leaf_types(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', config.get_type(key)


@pytest.mark.parametrize('module', [ade20k, ade20k_csail, voc12_aug, cityscapes, quickstart,
                                    folder, camvid],
                         ids=lambda m: m.__name__)
def test_config_fields_are_typed_so_flags_can_override_them(module):
  config = module.get_config()
  if module is folder:
    config.model.num_classes = 3  # the user's, from the command line
  untyped = [path for path, kind in _leaf_types(config) if kind is type(None)]
  # config_flags refuses `--config.x=...` on a field whose only known type is NoneType.
  assert not untyped, f'use ml_collections.config_dict.placeholder(type) for {untyped}'
  build_model(config.model)  # the model fields are all known to build_model
  inference.TestProtocol.from_config(config.test)  # and the test protocol is a valid one
  assert config.batch_size % 1 == 0 and config.num_train_steps > config.optimizer.warmup_steps
