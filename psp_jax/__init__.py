"""psp_jax: PSPNet semantic segmentation in JAX/Flax, numerically matched to mmsegmentation.

What research code uses, by name (README "Using the model in your own code"):
the model (`PSPNet`, `build_model`, `DilatedResNet`, `PyramidPooling`; features by
`model.apply(variables, images, method='features')`), the images it takes
(`normalize`), the loss (`segmentation_loss`, `check_labels`), the training state and
step (`TrainState`, `create_train_state`; the step is `psp_jax.train_step.train_step`, in
the module of that name) and checkpoints of variables (`save_variables`, `load_variables`).
"""

from psp_jax.base import platforms

platforms.cpu_only_without_tpu()

# pylint: disable=g-import-not-at-top,wrong-import-position
from psp_jax.evaluation.inference import normalize
from psp_jax.models import build_model, DilatedResNet, PSPNet, PyramidPooling
from psp_jax.training import train_step
from psp_jax.training.checkpoint import load_variables, save_variables
from psp_jax.training.losses import check_labels, segmentation_loss
from psp_jax.training.train_step import create_train_state, TrainState

__version__ = '0.1.0'
