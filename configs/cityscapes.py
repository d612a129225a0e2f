"""PSPNet-50 on Cityscapes fine (19 classes), as hszhao/semseg's cityscapes_pspnet50.yaml.

semseg reports 77.30 mIoU single-scale (78.38 multi-scale) on Cityscapes val with this
recipe: global batch 16, 200 epochs of 2,975 images, 713x713 crops, rotation and blur,
heads at 10x the learning rate, from its deep-stem ImageNet ResNet-50. The data are TFDS's
`cityscapes/semantic_segmentation` (manual download, see psp_jax/data/builders/cityscapes.py),
whose label ids are mapped to the 19 train ids on the fly.
"""

import ml_collections

from configs import voc12_aug


def get_config() -> ml_collections.ConfigDict:
  config = voc12_aug.get_config()
  config.dataset.name = 'cityscapes/semantic_segmentation'  # 2,975 train / 500 validation
  config.model.num_classes = 19
  config.augment.crop_size = (713, 713)
  config.num_train_steps = 200 * (2_975 // 16)  # 200 epochs
  config.test.base_size = 2048                  # semseg: frames stay 1024x2048
  config.test.crop_size = (713, 713)
  config.test.stride = (475, 475)
  config.eval_every_steps = 20 * (2_975 // 16)
  config.checkpoint_every_steps = 2 * (2_975 // 16)
  return config
