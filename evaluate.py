"""Evaluates PSPNet: `python evaluate.py --config=configs/ade20k.py --workdir=DIR`.

Uses the best (or --which=latest) checkpoint of a training workdir, or the variables at
--checkpoint=DIR (e.g. a converted mmseg/semseg model, `python -m psp_jax.convert`).
The test protocol is config.test (whole/slide, test resize, scales, flip). Prints the
per-class table and writes it as JSON (default: DIR/eval_<split>.json).
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from psp_jax import checkpoint, config_check, evaluation, input_pipeline, train_lib

config_flags.DEFINE_config_file('config', None, 'Config file (model, dataset, test).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir whose checkpoint to evaluate.')
flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Which checkpoint of --workdir.')
flags.DEFINE_string('checkpoint', None, 'Variables from psp_jax.convert, instead of --workdir.')
flags.DEFINE_string('split', None, 'TFDS split (default: config.dataset.eval_split).')
flags.DEFINE_string('output', None, 'JSON file for the metrics.')
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if bool(FLAGS.workdir) == bool(FLAGS.checkpoint):
    raise app.UsageError('Give exactly one of --workdir and --checkpoint.')
  config_check.check_config(FLAGS.config)
  input_pipeline.hide_accelerators_from_tf()
  if FLAGS.checkpoint:
    variables, source = checkpoint.load_variables(FLAGS.checkpoint), FLAGS.checkpoint
  else:
    variables, step = train_lib.load_trained_variables(FLAGS.workdir, FLAGS.which)
    source = f'{FLAGS.workdir} ({FLAGS.which}, step {step})'
  checkpoint.check_fits(variables, train_lib.variable_shapes(FLAGS.config.model), source)
  split = FLAGS.split or FLAGS.config.dataset.eval_split
  metrics, table = evaluation.evaluate_config(FLAGS.config, variables, split)
  print(f'{FLAGS.config.dataset.name} {split}, {source}:\n{table}')
  output = FLAGS.output or os.path.join(FLAGS.workdir or FLAGS.checkpoint, f'eval_{split}.json')
  with open(output, 'w') as f:
    json.dump({'source': source, 'split': split, 'test': FLAGS.config.test.to_dict(),
               'metrics': metrics}, f, indent=2)
  logging.info('Wrote %s', output)


if __name__ == '__main__':
  app.run(main, flags_parser=config_check.parse_flags)
