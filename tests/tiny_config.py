"""The embedded default shrunk to seconds per step, for tests that run train.py itself.

`python train.py --config=tests/tiny_config.py --config.dataset.data_dir=DIR ...`
"""

import ml_collections

from configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.dataset.name = 'synthetic_scenes/tiny'  # 6 train / 3 validation scenes
  config.model.update(stem_widths=(4, 4, 8), base_width=4, ppm_channels=4, channels=8,
                      aux_channels=4)
  config.augment.crop_size = (32, 32)
  config.batch_size = 4  # one per simulated device
  config.num_train_steps = 3
  config.optimizer.warmup_steps = 1
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  return config


def for_run(data_dir: str, steps: int) -> ml_collections.ConfigDict:
  """get_config() with the scenes in `data_dir` and `steps` steps, for tests that train
  in-process."""
  config = get_config()
  config.dataset.data_dir = data_dir
  config.num_train_steps = steps
  return config
