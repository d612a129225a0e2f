"""The embedded default: PSPNet on procedural street/harbour scenes, on a laptop CPU in < 10 min.

`python train.py --config=configs/quickstart.py --workdir=DIR` generates the
synthetic_scenes dataset (4000 train / 500 validation 48x256 scenes, in seconds), trains a
narrow ResNet-18-D8 PSPNet with mmseg's recipe scaled down on whole scenes, and reports
validation mIoU with per-class IoU. Six classes (quay/sidewalk, boat/car, buoy/bollard) are
decided only by water or road at least 104 pixels away, which the pyramid's global bin sees
and the plain dilated FCN, the ablation `--config.model.pool_scales='()'`, does not.
"""

import ml_collections
from ml_collections import config_dict

from psp_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.dataset.name = 'synthetic_scenes/default'
  config.dataset.prepare = True     # generated locally, nothing to download

  model = config.model
  model.num_classes = 10
  model.depth = 18                  # BasicBlock ResNet, as mmseg's pspnet_r18-d8
  model.stem_widths = (8, 8, 16)
  model.base_width = 16             # a quarter of ResNet-18's widths: fits 2 CPU cores
  model.ppm_channels = 16
  model.channels = 32
  model.aux_channels = 16           # stage 3 of ResNet-18 has 4 x 16 = 64 channels

  config.augment.crop_size = (48, 256)  # whole scenes: the cue and the objects in every crop
  config.augment.scale_range = (1.0, 1.0)  # a rescaled crop could cut the cue off
  config.augment.resize_scale = config_dict.placeholder(tuple)  # the scenes' own 48x256
  config.augment.photometric = False  # the host's 2 cores are busy training

  config.batch_size = 16
  config.num_train_steps = 800
  # mmseg's recipe otherwise (configs/ade20k.py): LinearLR warm-up then PolyLR to 1e-4 at the
  # last step, the loss averaged over all pixels.
  config.optimizer.learning_rate = 0.05
  config.optimizer.warmup_steps = 50
  config.test.resize = 'none'       # the scenes are evaluated at their 48x256
  config.test.size_divisor = None
  config.log_every_steps = 50
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 200
  return config
