r"""Exports a trained PSPNet: StableHLO (jax.export), a TF SavedModel (jax2tf) or ONNX.

  python -m psp_jax.export --config=configs/ade20k.py --checkpoint=DIR \
      --format=stablehlo --out=pspnet.stablehlo
  python -m psp_jax.export --config=configs/quickstart.py --workdir=W \
      --format=savedmodel --out=pspnet_savedmodel/
  python -m psp_jax.export --config=configs/ade20k.py --checkpoint=DIR \
      --format=onnx --out=pspnet.onnx

The artifact takes uint8 RGB images [B, H, W, 3] of any batch size, height and width and
returns the label map and the logits (psp_jax/export/__init__.py).
"""

import os

from absl import flags
from ml_collections import config_flags

from psp_jax import export
from psp_jax.base import errors
from psp_jax.config import config_check
from psp_jax.data import input_pipeline
from psp_jax.models.pspnet import build_model
from psp_jax.tools import cli
from psp_jax.training import checkpoint

config_flags.DEFINE_config_file('config', None, 'Config file whose `model` the variables are.',
                                lock_config=True)
flags.DEFINE_string('checkpoint', None, 'Variables written by psp_jax.convert.')
flags.DEFINE_string('workdir', None, 'Training workdir (its best checkpoint), instead.')
flags.DEFINE_enum('format', None, export.FORMATS, 'Artifact to write.')
flags.DEFINE_string('out', None, 'File (stablehlo, onnx) or folder (savedmodel) to write.')
flags.mark_flags_as_required(['config', 'format', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise errors.InputError(f'unexpected arguments: {argv[1:]}')
  if bool(FLAGS.workdir) == bool(FLAGS.checkpoint):
    raise errors.InputError('give exactly one of --checkpoint and --workdir.')
  if os.path.exists(FLAGS.out):
    raise errors.InputError(f'--out={FLAGS.out} exists; give a new path.')
  config_check.check_config(FLAGS.config)
  input_pipeline.hide_accelerators_from_tf()
  model = build_model(FLAGS.config.model)
  variables = (checkpoint.load_variables(FLAGS.checkpoint) if FLAGS.checkpoint
               else checkpoint.load_trained_variables(FLAGS.workdir)[0])
  checkpoint.check_fits(variables, checkpoint.variable_shapes(model),
                        FLAGS.checkpoint or FLAGS.workdir)
  if FLAGS.format == 'stablehlo':
    with open(FLAGS.out, 'wb') as f:
      f.write(export.export_stablehlo(model, variables))
  elif FLAGS.format == 'savedmodel':
    export.export_savedmodel(model, variables, FLAGS.out)
  else:
    export.export_onnx(model, variables, FLAGS.out)
  print(f'Wrote {FLAGS.format} for uint8 images of any batch size and height x width '
        f'to {FLAGS.out}')


if __name__ == '__main__':
  cli.run(main)
