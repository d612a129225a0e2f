"""Flax modules: the dilated ResNet backbone and the PSPNet heads."""

from psp_jax.models.pspnet import PSPNet, PyramidPooling, build_model
from psp_jax.models.resnet import DilatedResNet
