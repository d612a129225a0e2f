"""PSPNet on ADE20K as CSAIL trains it: mit_semseg 1.0.0's resnet50dilated + ppm_deepsup.

CSAILVision/semantic-segmentation-pytorch, config/ade20k-resnet50dilated-ppm_deepsup.yaml
with its train.py and eval.py. Their reported figure for this model is 41.26 mIoU / 79.73%
pixel accuracy without multi-scale testing, 42.14 / 80.13 with it (their README); eval.py
with the yaml's imgSizes, as config.test below, is the five-size test.

Their released weights convert with
  python -m psp_jax.convert --format=csail encoder_epoch_20.pth decoder_epoch_20.pth \
      --config=configs/ade20k_csail.py --out=DIR
and resnet18dilated / resnet101dilated with --config.model.depth=18
--config.model.aux_channels=128 (fc_dim 512: deep supervision 256 -> 128) or
--config.model.depth=101 (25 epochs: --config.num_train_steps=125000).

Training differs from theirs in one way psp_jax's fixed-shape batches impose: CSAIL feeds
whole images (short side one of 300..600, long side <= 1000, the batch padded to its
largest image), while this recipe draws the short side uniformly from 300..600 and takes
a 600x600 crop (padded with the mean colour / ignore where the image is smaller). Their
loss is averaged per GPU, then over GPUs; ours over the global batch's labelled pixels.
Their decoder starts from kaiming-normal convolutions (BN bias 1e-4); ours from mmseg's
initialisation. The encoder starts from CSAIL's ImageNet ResNet (resnet50-imagenet.pth,
the deep-stem names of semseg's: --format=semseg-resnet, then --config.init_from=DIR).
"""

import ml_collections

from configs import ade20k


def get_config() -> ml_collections.ConfigDict:
  config = ade20k.get_config()

  model = config.model               # mit_semseg ModelBuilder, arch resnet50dilated/ppm_deepsup
  model.stem_widths = (64, 64, 128)  # its ResNet's deep stem conv1..conv3
  model.contract_dilation = True     # _nostride_dilate: strided 3x3s at half the dilation
  model.dilate_basic_conv2 = True    # ... and every other 3x3 at the full one (ResNet-18)
  model.ppm_channels = 512           # PPMDeepsup: 512 per bin, whatever fc_dim
  model.channels = 512               # conv_last: 3x3 (fc_dim + 4 * 512) -> 512
  model.aux_channels = 512           # cbr_deepsup: 3x3 fc_dim // 2 -> fc_dim // 4
  model.bn_momentum = 0.001          # SynchronizedBatchNorm2d's default momentum

  augment = config.augment           # TrainDataset
  augment.resize_scale = (1000, 600)  # (imgMaxSize, max(imgSizes)) times a ratio in 0.5..1:
  augment.scale_range = (0.5, 1.0)   # short sides 300..600 (long <= 1000 x ratio), not the five
  augment.crop_size = (600, 600)     # no crop in CSAIL (see the module docstring)
  augment.cat_max_ratio = 1.0
  augment.photometric = False        # random_flip only
  augment.flip = True

  config.batch_size = 16             # batch_size_per_gpu 2 x 8 GPUs (their README's server)
  config.num_train_steps = 20 * 5000  # num_epoch 20 x epoch_iters 5000
  config.aux_weight = 0.4            # deep_sup_scale
  config.loss_average = 'valid'      # nn.NLLLoss(ignore_index=-1): over labelled pixels
  config.segm_downsampling_rate = 8  # the loss at the 1/8 logits, labels downsampled
  optimizer = config.optimizer       # create_optimizers / adjust_learning_rate
  optimizer.schedule = 'semseg'      # lr * (1 - iter / max_iters) ** lr_pow, iter from 0
  optimizer.learning_rate = 0.02     # lr_encoder = lr_decoder
  optimizer.end_learning_rate = 0.0
  optimizer.weight_decay = 1e-4
  optimizer.decay_norm_and_bias = False  # group_weight: no decay on BN and biases

  test = config.test                 # eval.py: ValDataset, softmax averaged over sizes
  test.resize = 'csail'
  test.short_sides = (300, 375, 450, 525, 600)
  test.max_size = 1000
  test.size_multiple = 8
  test.size_divisor = None           # resized to multiples of 8, never padded
  config.eval_every_steps = 5000     # one epoch
  config.checkpoint_every_steps = 5000
  return config
