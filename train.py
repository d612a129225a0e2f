"""Trains PSPNet: `python train.py --config=configs/ade20k.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=8`. Rerunning with
the same --workdir resumes from its latest checkpoint. On a TPU pod or several GPU
hosts, run the same command on every host with --multiprocess (README: "Running at scale").
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from psp_jax.data import input_pipeline
from psp_jax.tools import cli
from psp_jax.training import train_loop

config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and TensorBoard logs.')
cli.define_multiprocess_flags()
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def _orbax_warnings_in_one_line(record: std_logging.LogRecord) -> bool:
  """Orbax logs several INFO lines per file it writes: keep its warnings and errors only,
  each on one line (a failed write logs its traceback from a background thread; the loop
  then says what failed and what to do, e.g. a full disk)."""
  if '/orbax/' not in record.pathname:
    return True
  record.exc_info = record.exc_text = None
  return record.levelno >= std_logging.WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_orbax_warnings_in_one_line)
  input_pipeline.hide_accelerators_from_tf()
  cli.start_multiprocess()
  train_loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
