"""PSPNet-50 on PASCAL VOC 2012 + SBD (train_aug), as hszhao/semseg's voc2012_pspnet50.yaml.

semseg reports 77.05 mIoU single-scale (78.02 multi-scale) on VOC 2012 val with this recipe:
global batch 16, 50 epochs of 10,582 images, 473x473 crops, rotation and blur, heads at
10x the learning rate, starting from its deep-stem ImageNet ResNet-50
(`python -m psp_jax.convert --format=semseg-resnet resnet50_v2.pth ...`, then
`--config.init_from=DIR`).
"""

import ml_collections
from ml_collections import config_dict

from psp_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.dataset.name = 'voc12_aug'  # psp_jax.data.builders.voc12_aug: 10,582 train / 1,449 val

  model = config.model                 # semseg PSPNet(layers=50)
  model.num_classes = 21
  model.stem_widths = (64, 64, 128)    # semseg's deep-base ResNet
  model.contract_dilation = False      # semseg dilates every block of a stage alike
  model.ppm_channels = 512             # semseg PPM: 2048 / 4 per bin
  model.channels = 512
  model.aux_channels = 256
  model.align_corners = True           # semseg F.interpolate(..., align_corners=True)

  augment = config.augment             # semseg train_transform, in its order
  augment.scale_range = (0.5, 2.0)     # RandScale: of the image's own size
  augment.resize_scale = config_dict.placeholder(tuple)  # no box (overridable)
  augment.rotate_degrees = 10.0        # RandRotate([-10, 10]) with p 0.5, mean / 255 padding
  augment.rotate_prob = 0.5
  augment.blur_prob = 0.5              # RandomGaussianBlur(radius=5)
  augment.flip = True                  # RandomHorizontalFlip
  augment.crop_size = (473, 473)       # Crop(type='rand'), padded with mean / 255
  augment.cat_max_ratio = 1.0          # semseg crops anywhere
  augment.photometric = False

  config.batch_size = 16
  config.num_train_steps = 50 * (10_582 // 16)  # 50 epochs, semseg drops the last batch
  config.loss_average = 'valid'        # nn.CrossEntropyLoss(ignore_index=255)
  optimizer = config.optimizer
  optimizer.learning_rate = 0.01
  optimizer.weight_decay = 1e-4
  optimizer.schedule = 'semseg'        # poly_learning_rate(base_lr, curr_iter, max_iter)
  optimizer.head_lr_mult = 10.0        # semseg: ppm, cls and aux at 10x base_lr
  optimizer.end_learning_rate = 0.0    # semseg's poly has no floor
  config.init_from = ''                # set to the converted semseg ImageNet ResNet-50
  config.test.resize = 'base_size'     # semseg test.py: long side 512
  config.test.base_size = 512
  config.test.mode = 'slide'           # semseg's 473 crops at stride 2/3, on mmseg's grid
  config.test.crop_size = (473, 473)
  config.test.stride = (315, 315)
  config.test.size_divisor = None      # semseg pads no image; its windows are mean-padded
  config.eval_every_steps = 5 * (10_582 // 16)
  config.checkpoint_every_steps = 10_582 // 16
  return config
