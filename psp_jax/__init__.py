"""psp_jax: PSPNet semantic segmentation in JAX/Flax, numerically matched to mmsegmentation."""

from psp_jax.models import DilatedResNet, PSPNet, PyramidPooling, build_model

__version__ = '0.1.0'
