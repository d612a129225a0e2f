r"""Converts a PyTorch checkpoint to an Orbax checkpoint of Flax variables.

  python -m psp_jax.convert --format=mmseg pspnet_r50-d8_ade20k.pth \
      --config=configs/ade20k.py --out=/tmp/pspnet_r50_ade20k

  python -m psp_jax.convert --format=csail encoder_epoch_20.pth decoder_epoch_20.pth \
      --config=configs/ade20k_csail.py --out=/tmp/csail_r50_ade20k

--format: mmseg | semseg | csail (full PSPNet; csail reads its encoder and decoder files,
in that order), mmcv-resnet | torchvision | semseg-resnet (ImageNet backbone only, to
initialise training). `--config.model.*` overrides describe the checkpoint's
architecture, e.g. --config.model.num_classes=19.
"""

from absl import app, flags
from ml_collections import config_flags

from psp_jax.convert import torch_checkpoint
from psp_jax.models.pspnet import build_model
from psp_jax.tools import cli
from psp_jax.training import checkpoint

config_flags.DEFINE_config_file('config', None, 'Config file whose `model` the checkpoint is for.',
                                lock_config=True)
flags.DEFINE_enum('format', None, sorted(torch_checkpoint.FORMATS), 'Layout of the checkpoint.')
flags.DEFINE_string('out', None, 'Directory to write the Orbax checkpoint to (must not exist).')
flags.DEFINE_bool('trust_pickle', False, 'Allow arbitrary pickled objects in the .pth file.')
flags.mark_flags_as_required(['config', 'format', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Give the input checkpoint (.pth; --format=csail: ENCODER.pth '
                         'DECODER.pth).')
  model = build_model(FLAGS.config.model)
  # load_torch_checkpoint holds the number of files to the format's.
  variables = torch_checkpoint.load_torch_checkpoint(argv[1:], FLAGS.format, model,
                                                     trust_pickle=FLAGS.trust_pickle)
  path = checkpoint.save_variables(FLAGS.out, variables)
  print(f'Wrote {FLAGS.format} variables for {FLAGS.config.model.depth}-layer PSPNet to {path}')


if __name__ == '__main__':
  cli.run(main)
