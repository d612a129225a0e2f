"""PSPNet R50-D8 on your own images and label maps (mmseg's BaseSegDataset folder layout).

  python train.py --config=configs/folder.py --config.dataset.root=DIR \
      --config.model.num_classes=K --workdir=W

DIR/images/{train,val}/NAME.jpg and DIR/annotations/{train,val}/NAME.png (suffixes:
config.dataset.img_suffix, seg_map_suffix), with the K class names in DIR/classes.json
({"classes": [...], "palette": [[r, g, b], ...]}) or --config.dataset.classes. Labels are
class ids 0..K-1 with 255 = ignore (palette or grey PNGs), or RGB colours of the palette;
--config.dataset.reduce_zero_label=True reads 0 as ignore and k as class k - 1, as mmseg's
ADE20K. psp_jax.data.builders.folder says how the folder is prepared and checked.
The recipe is mmseg's ADE20K one (psp_jax/config/__init__.py); start from an ImageNet backbone with
--config.init_from=DIR, written by `python -m psp_jax.convert --format=mmcv-resnet`.
"""

import ml_collections

from psp_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.dataset.name = 'folder'    # psp_jax.data.builders.folder over config.dataset.root
  config.dataset.prepare = True     # prepared from the folder, once per change of its files
  config.model.num_classes = 0      # set --config.model.num_classes to your classes' count
  return config
