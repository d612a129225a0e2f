"""Flax modules: the dilated ResNet backbone and the PSPNet heads."""

from psp_jax.models.pspnet import build_model, PSPNet, PyramidPooling
from psp_jax.models.resnet import DilatedResNet
