"""Converters from PyTorch checkpoints (mmsegmentation, hszhao/semseg, CSAIL, ImageNet ResNets)."""

from psp_jax.convert.torch_checkpoint import (BACKBONE_FORMATS, ConversionError, convert_state_dict,
                                              FILES, FORMATS, load_torch_checkpoint,
                                              read_torch_state_dict)
