"""Evaluates PSPNet: `python evaluate.py --config=configs/ade20k.py --workdir=DIR`.

Uses the best (or --which=latest) checkpoint of a training workdir, or the variables at
--checkpoint=DIR (e.g. a converted mmseg/semseg model, `python -m psp_jax.convert`).
The test protocol is config.test (whole/slide, test resize, scales, flip). Prints the
per-class table and writes it, with the confusion matrix (rows: ground truth, columns:
prediction), as JSON (default: DIR/eval_<split>.json). With --multiprocess, one process per
host, each evaluates its share of the split and process 0 writes the result.
"""

import json
import os

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from psp_jax.config import config_check
from psp_jax.data import input_pipeline
from psp_jax.data.dataset import Dataset
from psp_jax.evaluation import evaluator, inference
from psp_jax.models.pspnet import build_model
from psp_jax.tools import cli
from psp_jax.training import checkpoint

config_flags.DEFINE_config_file('config', None, 'Config file (model, dataset, test).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir whose checkpoint to evaluate.')
flags.DEFINE_enum('which', 'best', ['best', 'latest'], 'Which checkpoint of --workdir.')
flags.DEFINE_string('checkpoint', None, 'Variables from psp_jax.convert, instead of --workdir.')
flags.DEFINE_string('split', None, 'TFDS split (default: config.dataset.eval_split).')
flags.DEFINE_string('output', None, 'JSON file for the metrics.')
cli.define_multiprocess_flags()
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def evaluate(config, model, variables, split: str
             ) -> tuple[dict[str, float], str, np.ndarray]:
  """(metrics, per-class table, [C, C] confusion matrix) of `variables` of `model` on
  `split` of config.dataset; with several processes, each evaluates its share of it."""
  data = Dataset(config.dataset)
  split_evaluator = evaluator.Evaluator(model, inference.TestProtocol.from_config(config.test),
                                        config.model.num_classes, data.class_names)
  metrics, table = evaluator.evaluate_split(split_evaluator, data, split, variables)
  return metrics, table, split_evaluator.last_confusion


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if bool(FLAGS.workdir) == bool(FLAGS.checkpoint):
    raise app.UsageError('Give exactly one of --workdir and --checkpoint.')
  config_check.check_config(FLAGS.config)
  input_pipeline.hide_accelerators_from_tf()
  cli.start_multiprocess()
  config = FLAGS.config
  model = build_model(config.model)
  if FLAGS.checkpoint:
    variables, source = checkpoint.load_variables(FLAGS.checkpoint), FLAGS.checkpoint
  else:
    variables, step = checkpoint.load_trained_variables(FLAGS.workdir, FLAGS.which)
    source = f'{FLAGS.workdir} ({FLAGS.which}, step {step})'
  checkpoint.check_fits(variables, checkpoint.variable_shapes(model), source)
  split = FLAGS.split or config.dataset.eval_split
  metrics, table, confusion = evaluate(config, model, variables, split)
  if jax.process_index() > 0:  # every process has the whole split's numbers; one writes
    return
  print(f'{config.dataset.name} {split}, {source}:\n{table}')
  output = FLAGS.output or os.path.join(FLAGS.workdir or FLAGS.checkpoint, f'eval_{split}.json')
  with open(output, 'w') as f:
    json.dump({'source': source, 'split': split, 'test': FLAGS.config.test.to_dict(),
               'metrics': metrics, 'confusion_matrix': confusion.tolist()}, f, indent=2)
  logging.info('Wrote %s', output)


if __name__ == '__main__':
  cli.run(main)
