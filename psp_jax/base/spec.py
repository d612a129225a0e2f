"""The data contract: label convention, image normalisation, stored features, batch layout.

Every layer reads these from here, so no module imports the loss or the input pipeline
for a constant.

A training or evaluation batch is a dict:
  IMAGE: [B, H, W, 3] float32, RGB normalised with MEAN_RGB / STDDEV_RGB (ImageNet, 0-255 scale);
  LABEL: [B, H, W] int32 class ids in [0, num_classes), IGNORE_LABEL where unlabelled.
Under pmap both gain a leading [num_local_devices] axis.
"""

IGNORE_LABEL = 255

# mmseg's data_preprocessor / semseg's value_scale * ImageNet statistics, on 0-255 RGB.
MEAN_RGB = (123.675, 116.28, 103.53)
STDDEV_RGB = (58.395, 57.12, 57.375)

# Batch keys.
IMAGE = 'image'
LABEL = 'label'

# Features of a stored example (our builders' features.py): uint8 [H, W, 3] image,
# uint8 [H, W, 1] label map, and the source file's name for errors.
IMAGE_FEATURE = 'image'
LABEL_FEATURE = 'segmentation_mask'
FILE_NAME_FEATURE = 'file_name'
