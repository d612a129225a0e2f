"""The config schema: every key a psp_jax config has, with mmseg's PSPNet recipe as defaults.

configs/*.py are recipes built on `get_config()`, overriding values and never adding keys
(psp_jax.config.config_check refuses unknown keys). The defaults are mmsegmentation's
pspnet_r50-d8_4xb4-80k_ade20k-512x512, so a recipe states only how it differs.
"""

import ml_collections
from ml_collections import config_dict


def get_model_config() -> ml_collections.ConfigDict:
  """mmseg `pspnet_r50-d8`: ResNetV1c-50, PSPHead 512 ch, aux FCNHead 256 ch on stage 3."""
  model = ml_collections.ConfigDict()
  model.num_classes = 150
  model.depth = 50                  # ResNet depth: 18, 34, 50, 101 or 152.
  model.stem = 'deep'               # ResNetV1c deep stem (three 3x3 convs).
  model.stem_widths = (32, 32, 64)  # mmseg ResNetV1c; semseg uses (64, 64, 128).
  model.output_stride = 8           # strides (1, 2, 1, 1), dilations (1, 1, 2, 4).
  model.contract_dilation = True    # mmseg: first block of a dilated stage at half dilation.
  model.dilate_basic_conv2 = False  # ResNet-18/34: conv2 dilated too (CSAIL); mmseg: conv1 only.
  model.base_width = 64             # channels of stage 1's 3x3 convs (doubling per stage).
  model.pool_scales = (1, 2, 3, 6)  # pyramid bins; () gives a plain dilated FCN.
  model.ppm_channels = 512          # channels of each pyramid branch (mmseg: head channels).
  model.channels = 512              # PSPHead bottleneck channels.
  model.aux_channels = 256          # auxiliary FCNHead channels.
  model.aux_in_index = 2            # auxiliary head reads stage 3 (1024 ch for R50).
  model.dropout_rate = 0.1          # Dropout2d before both classifiers.
  model.align_corners = False       # mmseg convention; semseg uses True.
  model.bn_momentum = 0.1           # BN running-stats momentum, PyTorch's convention; CSAIL 0.001.
  model.remat = False               # rematerialise backbone blocks to save memory.
  model.dtype = 'float32'           # compute dtype; 'bfloat16' for mixed precision.
  model.param_dtype = 'float32'     # parameters and BN statistics stay float32.
  model.kernels = 'auto'            # psp_jax.models.kernels: 'cpu' rewrites on CPU, plain 'xla' elsewhere.
  return model


def get_config() -> ml_collections.ConfigDict:
  """Every key; values of mmseg pspnet_r50-d8_4xb4-80k_ade20k-512x512 (4 GPUs x 4, 80k)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = get_model_config()

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'ade20k'    # psp_jax.data.builders.ade20k (SceneParsing, labels 0..149)
  config.dataset.data_dir = config_dict.placeholder(str)  # TFDS data dir; None = ~/tensorflow_datasets
  config.dataset.prepare = True     # download_and_prepare (real datasets read the manual dir)
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'validation'
  # Your own data (name 'folder', configs/folder.py), in mmseg BaseSegDataset's layout:
  # root/images/{train,val}/NAME + img_suffix, root/annotations/{train,val}/NAME +
  # seg_map_suffix.
  config.dataset.root = config_dict.placeholder(str)
  config.dataset.img_suffix = '.jpg'
  config.dataset.seg_map_suffix = '.png'
  config.dataset.reduce_zero_label = False  # label 0 = ignore, k -> k - 1 (as ADE20K's)
  config.dataset.classes = config_dict.placeholder(tuple)  # else root/classes.json
  config.dataset.palette = config_dict.placeholder(tuple)  # ((r, g, b), ...): RGB labels, pictures

  config.augment = ml_collections.ConfigDict()  # mmseg train_pipeline, in its order
  config.augment.scale_range = (0.5, 2.0)       # RandomResize ratio_range, times resize_scale:
  config.augment.resize_scale = (2048, 512)     # the (long, short) box, keep_ratio=True
  config.augment.rotate_degrees = 0.0           # semseg rotates by +-10; mmseg does not
  config.augment.rotate_prob = 0.5
  config.augment.blur_prob = 0.0                # semseg blurs with p 0.5; mmseg does not
  config.augment.crop_size = (512, 512)         # RandomCrop, padded with mean / 255
  config.augment.cat_max_ratio = 0.75           # retry crops dominated by one class
  config.augment.flip = True                    # RandomFlip p 0.5
  config.augment.photometric = True             # PhotoMetricDistortion

  config.batch_size = 16            # global: 4 GPUs x 4
  config.num_train_steps = 80_000
  config.sync_bn = True             # mmseg SyncBN: BN statistics over the global batch
  config.aux_weight = 0.4           # auxiliary FCNHead loss weight
  # mmseg's CrossEntropyLoss(avg_non_ignore=False), this recipe's: the mean over all pixels,
  # ignored ones included; 'valid' averages over labelled pixels (avg_non_ignore=True, semseg).
  config.loss_average = 'all'
  # 1: the loss at the labels' size, the logits upsampled bilinearly (mmseg, semseg); the
  # model's output stride (CSAIL's segm_downsampling_rate 8): at the logits' size, the labels
  # nearest-downsampled to them (losses.downsample_labels).
  config.segm_downsampling_rate = 1
  # One weight per class (mmseg CrossEntropyLoss class_weight), both heads: the loss is the
  # class_weight[label]-weighted average (losses.segmentation_loss). None: all classes 1.
  # `python -m psp_jax.tools.class_weights` computes SegNet's and ENet's from a prepared split.
  config.class_weight = config_dict.placeholder(tuple)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.schedule = 'mmseg'          # mmengine LinearLR + PolyLR (see optimizer.py)
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_norm_and_bias = True  # mmseg decays every parameter
  config.optimizer.head_lr_mult = 1.0          # semseg: 10 on the heads
  config.optimizer.poly_power = 0.9
  config.optimizer.end_learning_rate = 1e-4    # mmseg PolyLR eta_min, reached at the last step
  config.optimizer.warmup_steps = 0            # LinearLR(begin=0, end=warmup_steps), then PolyLR
  config.optimizer.warmup_ratio = 0.1          # LinearLR start_factor

  config.test = ml_collections.ConfigDict()    # evaluate.py, mmseg test_pipeline + test_cfg
  config.test.mode = 'whole'                    # 'whole' image or 'slide' window
  config.test.crop_size = (512, 512)            # slide windows
  config.test.stride = (341, 341)
  config.test.resize = 'keep_ratio'             # mmseg Resize(scale=(2048, 512), keep_ratio)
  config.test.test_scale = (2048, 512)          # 'keep_ratio': (long, short) edge limits
  config.test.base_size = 512                   # 'base_size' (semseg): the long side
  # 'csail' (mit_semseg's ValDataset): one pass per short side, the long side at most
  # max_size, each size rounded up to a multiple of size_multiple (resized, not padded).
  config.test.short_sides = (300, 375, 450, 525, 600)  # imgSizes
  config.test.max_size = 1000                   # imgMaxSize
  config.test.size_multiple = 8                 # padding_constant
  config.test.scales = (1.0,)                   # multi-scale: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75
  config.test.flip = False
  config.test.window_batch = 4
  # Pad to a multiple (mean colour, logits cropped back), as mmseg's test_cfg size_divisor:
  # ADE20K's many image sizes then compile a few dozen programs, not hundreds. None runs
  # every image at its own size, exactly as mmseg's batch-1 test.
  config.test.size_divisor = config_dict.placeholder(int)  # an int or None, overridable
  config.test.size_divisor = 128

  config.init_from = ''             # Orbax variables from `python -m psp_jax.convert`
  config.num_preview_images = 3     # validation predictions drawn in TensorBoard
  config.log_every_steps = 50
  config.eval_every_steps = 8000    # mmseg val_interval
  config.checkpoint_every_steps = 8000
  config.keep_checkpoints = 3
  return config
