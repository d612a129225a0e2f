"""How the command-line tools start and fail: one line for a refused input, a traceback for a bug.

`run(main)` is absl's `app.run(main)` with two changes. Flags: a `--config` file that does
not exist, or an override of a key the config schema lacks (named with the closest key),
stops before anything loads. Errors: our own checks' (errors.InputError), missing files,
a diverged run and a usage error print `error: <message>` on one line and exit with
status 2; Ctrl-C that the train loop does not catch (module training.preemption) is one
line and status 130, as a shell gives; any other exception is a bug and keeps its traceback.

`define_multiprocess_flags` / `start_multiprocess`: one process per host (TPU pod slices,
multi-node GPUs), for train.py and evaluate.py.
"""

import os
import re
import sys
from typing import Callable

import jax
from absl import app, flags

from psp_jax.base import errors
from psp_jax.config import config_check

# What a user can act on from the message alone.
REFUSED = (errors.InputError, app.UsageError, FileNotFoundError, NotADirectoryError,
           PermissionError, FloatingPointError)
_CONFIG_FILE = re.compile(r'^--?config=([^:]*)')
_CONFIG_KEY = re.compile(r'^--?config\.([^=\[]+)')


def one_line(error: BaseException) -> str:
  """`error: ...`: the message with its lines joined, as a shell user reads it."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  return 'error: ' + ' '.join(lines or [type(error).__name__])


def fail(error: BaseException) -> None:
  sys.stderr.write(one_line(error) + '\n')
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags_parser: absl's, after checking the config file and keys named in argv."""
  for path in [m.group(1) for m in map(_CONFIG_FILE.match, argv) if m]:
    if not os.path.isfile(path):
      fail(errors.InputError(f'--config={path}: no such file (configs/ holds the shipped ones).'))
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:  # a value that does not parse, an unknown flag
    fail(errors.InputError(f'{error} (--helpshort lists the flags)'))
  except (AttributeError, KeyError):  # ml_collections refusing an override of a locked config
    overrides = [m.group(1) for m in map(_CONFIG_KEY.match, argv) if m]
    unknown = config_check.unknown_keys(overrides, set(config_check.key_paths(
        config_check.schema())), '--config.')
    if not unknown:
      raise
    fail(errors.InputError(f'unknown config key {", ".join(unknown)}'))


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main), with our flag checks and one-line errors (module docstring)."""
  def guarded(argv):
    try:
      main(argv)
    except REFUSED as error:
      fail(error)
    except KeyboardInterrupt:  # a Ctrl-C before training starts, or a second one during it
      sys.stderr.write('Stopped by Ctrl-C: nothing saved since the last checkpoint (rerun the '
                       'same command to resume from it).\n')
      sys.exit(130)

  app.run(guarded, flags_parser=parse_flags)


def define_multiprocess_flags() -> None:
  """--multiprocess and its settings, for a script that runs one process per host."""
  flags.DEFINE_bool('multiprocess', False, 'Call jax.distributed.initialize(): one process per '
                    'host (TPU pods, SLURM and Kubernetes are detected; elsewhere give the '
                    'three flags below).')
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for --multiprocess.')
  flags.DEFINE_integer('num_processes', None, 'Number of processes, for --multiprocess.')
  flags.DEFINE_integer('process_id', None,
                       'This process, 0..num_processes-1, for --multiprocess.')
  flags.DEFINE_integer('heartbeat_timeout_seconds', 60,
                       'With --multiprocess: a process silent this long is declared dead and '
                       'every other one stops, naming it, instead of waiting at its next '
                       'collective (JAX\'s default is 100).')


def start_multiprocess() -> None:
  """jax.distributed.initialize() if --multiprocess (define_multiprocess_flags) was given.

  A lost process stops the others: JAX's coordination service (in process 0) declares a
  process dead after --heartbeat_timeout_seconds without a heartbeat and stops every other
  one with a fatal error naming it ('Task N heartbeat timeout', 'The following tasks are
  unhealthy ... N'); if process 0 itself is lost, the others stop at once ('the leader
  task was preempted/died'). Rerunning the same command on every host then resumes from
  the last complete checkpoint.
  """
  if flags.FLAGS.multiprocess:
    jax.distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                               flags.FLAGS.process_id,
                               heartbeat_timeout_seconds=flags.FLAGS.heartbeat_timeout_seconds)
