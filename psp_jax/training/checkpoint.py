"""Checkpoints on disk (Orbax): model variables, and the train state of a workdir.

Variables ({'params', 'batch_stats'}) are the format `python -m psp_jax.convert` writes,
training reads (`config.init_from`) and evaluation reads (`--checkpoint`). A training
workdir holds `checkpoints/` (the last k states) and `best/` (the best by validation mIoU).
"""

import hashlib
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import jax_utils, serialization, traverse_util
from jax.experimental import multihost_utils

from psp_jax.base import errors

_MAX_LISTED = 20  # mismatched arrays listed in the error; a different depth differs in hundreds


def save_variables(directory: str | os.PathLike, variables: Any, force: bool = False) -> str:
  """Writes `variables` to `directory` (which must not exist unless `force`). Returns its path."""
  _ignore_io_after_a_failure()
  path = os.path.abspath(os.fspath(directory))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, variables, force=force)
  checkpointer.wait_until_finished()
  return path


def load_variables(directory: str | os.PathLike) -> Any:
  """Reads variables written by `save_variables` as a tree of arrays."""
  _ignore_io_after_a_failure()
  path = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint directory at {path}.')
  if not os.path.exists(os.path.join(path, '_METADATA')) and any(
      os.path.isdir(os.path.join(path, sub)) for sub in ('checkpoints', 'best')):
    raise errors.InputError(
        f'{path} is a training workdir, not a folder of variables: give --workdir={path} '
        '(its best checkpoint; --which=latest for the latest) instead of --checkpoint.')
  return ocp.StandardCheckpointer().restore(path)


def check_fits(variables: Any, expected: Any, source: str, partial: bool = False,
               fix: str = 'Use the config the checkpoint was made with.') -> None:
  """Raises ValueError listing each array of `variables` that the model lacks or shapes otherwise.

  Args:
    variables: {'params', 'batch_stats'} from a checkpoint: arrays, or Orbax metadata
      (anything with a `.shape`), so a checkpoint can be checked before it is read.
    expected: the model's variables, e.g. `jax.eval_shape` of its init.
    source: what `variables` are, for the message (a path, `config.init_from=...`).
    partial: `variables` may hold only some of the model's arrays (a converted backbone);
      otherwise an array the model has and the checkpoint lacks is a mismatch too.
    fix: the last sentence of the message, what to do.
  """
  have = traverse_util.flatten_dict(variables)
  want = traverse_util.flatten_dict(expected)

  def shape(x):
    return tuple(getattr(x, 'shape', np.shape(x)))

  problems = [f'{"/".join(k)}: checkpoint {shape(v)}, model '
              f'{shape(want[k]) if k in want else "missing"}'
              for k, v in have.items() if k not in want or shape(v) != shape(want[k])]
  if not partial:
    problems += [f'{"/".join(k)}: checkpoint missing, model {shape(v)}'
                 for k, v in want.items() if k not in have]
  if problems:
    more = len(problems) - _MAX_LISTED
    raise errors.InputError(
        f'{source} does not fit the model config.model builds ({len(problems)} arrays):\n  '
        + '\n  '.join(problems[:_MAX_LISTED]) + (f'\n  ... and {more} more' if more > 0 else '')
        + f'\n{fix}')


def variable_shapes(model) -> Any:
  """{'params', 'batch_stats'} of `model` (a PSPNet), as shapes: traced, not run."""
  image = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)  # variables do not depend on it
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), image)


def managers(workdir: str) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
  """The last `keep_checkpoints` every `checkpoint_every_steps`, and the best by validation mIoU.

  The first keeps every checkpoint until the run prunes it (`prune`), which it does only
  after the newest has been read back intact (`check_saved`): a bad save never costs the
  good ones. Saves are synchronous: with several processes, Orbax's background commit
  threads met the processes' shutdown barrier in an order that aborted 2-process runs now
  and then.
  """
  _ignore_io_after_a_failure()
  latest = ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                           enable_async_checkpointing=False),
      item_handlers=ocp.StandardCheckpointHandler())
  best = ocp.CheckpointManager(
      os.path.join(workdir, 'best'),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m['mIoU'],
                                           best_mode='max', create=True,
                                           enable_async_checkpointing=False),
      item_handlers=ocp.StandardCheckpointHandler())
  return latest, best


DIGESTS = 'checkpoint_digests'  # workdir/checkpoint_digests/<step>.json, beside data_state/


def digest(host_state: Any) -> dict[str, str]:
  """SHA-256 of each array of a state dict (its dtype, shape and bytes; a scalar's value),
  by path."""
  def fingerprint(value) -> bytes:
    value = np.asarray(value)
    if value.ndim == 0:  # a scalar (the step) is saved as an array, restored as a number
      return repr(value.item()).encode()
    return f'{value.dtype}{value.shape}'.encode() + np.ascontiguousarray(value).tobytes()

  flat = traverse_util.flatten_dict(host_state, sep='/')
  return {key: hashlib.sha256(fingerprint(value)).hexdigest()
          for key, value in sorted(flat.items())
          if isinstance(value, (int, float, np.ndarray, np.generic))}


def save_state(manager: ocp.CheckpointManager, step: int, state, metrics=None,
               digests: str | None = None) -> Any:
  """Saves the unreplicated state as host arrays (written once, by process 0); returns them.

  `digests`: a folder for the arrays' SHA-256 (`digest`), written before the checkpoint
  (a digest without its checkpoint is never read), so `restore_verified` can tell a
  checkpoint whose bytes changed on disk from the one that was saved.
  """
  host_state = serialization.to_state_dict(jax.device_get(jax_utils.unreplicate(state)))
  if digests is not None and jax.process_index() == 0:
    os.makedirs(digests, exist_ok=True)
    path = os.path.join(digests, f'{step}.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(digest(host_state), f)
    os.replace(path + '.tmp', path)
  manager.save(step, args=ocp.args.StandardSave(host_state), metrics=metrics)
  return host_state


def check_saved(manager: ocp.CheckpointManager, step: int, host_state: Any,
                digests: str) -> str | None:
  """Why checkpoint `step`, read back from disk, is not `host_state` (`save_state`'s), or None."""
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(host_state))
  except Exception as error:  # pylint: disable=broad-except  # any unreadable file
    return f'cannot be read back ({_short(error)})'
  return _check_digest(restored, digests, step)


def prune(manager: ocp.CheckpointManager, keep: int) -> None:
  """Deletes all but the newest `keep` checkpoints; run once the newest is known intact."""
  for step in sorted(manager.all_steps())[:-keep]:
    manager.delete(step)


def set_aside(manager: ocp.CheckpointManager, steps: list[int], folder: str) -> None:
  """Moves checkpoints `steps` into `folder` (never deleted: a person may want them)."""
  if jax.process_index() == 0:
    os.makedirs(folder, exist_ok=True)
    for step in steps:
      target = os.path.join(folder, f'{step}-{int(time.time())}')
      os.replace(os.path.join(str(manager.directory), str(step)), target)
      logging.warning('Moved the bad checkpoint %d to %s.', step, target)
  multihost_utils.sync_global_devices('bad checkpoints set aside')
  manager.reload()


def prune_digests(digests: str, keep: list[int]) -> None:
  """Removes the digests of checkpoints no longer kept."""
  if jax.process_index() == 0 and os.path.isdir(digests):
    for name in os.listdir(digests):
      if name.endswith('.json') and name[:-5].isdigit() and int(name[:-5]) not in keep:
        os.remove(os.path.join(digests, name))


def _ignore_io_after_a_failure() -> None:
  """Stops the noise of one failed restore or save: when one array's read or write fails,
  Orbax closes its event loop while TensorStore still completes the others, and each
  completion's callback raises RuntimeError('Event loop is closed') as an unraisable
  exception (hundreds of tracebacks around the one line that says what failed, some before
  the failure reaches the caller). Only that error is dropped. Installed once, by whatever
  opens checkpoints (`managers`, `save_variables`, `load_variables`,
  `load_trained_variables`), before any read or write that may fail."""
  previous = sys.unraisablehook
  if getattr(previous, 'ignores_closed_loops', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.ignores_closed_loops = True
  sys.unraisablehook = hook


def _short(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:200]}{"..." if len(text) > 200 else ""}'


def _check_digest(restored: Any, digests: str, step: int) -> str | None:
  """Why checkpoint `step` is not the one saved, or None (also when it has no digest)."""
  path = os.path.join(digests, f'{step}.json')
  if not os.path.isfile(path):
    logging.info('Checkpoint %d has no digest (saved before psp_jax wrote them): not verified.',
                 step)
    return None
  with open(path) as f:
    expected = json.load(f)
  actual = digest(serialization.to_state_dict(jax.device_get(restored)))
  changed = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
  if changed:
    return (f'holds {len(changed)} array(s) whose bytes differ from those saved '
            f'({", ".join(changed[:3])}{" ..." if len(changed) > 3 else ""})')
  return None


def restore_verified(manager: ocp.CheckpointManager, state, digests: str, aside: str):
  """(`state` with the values of the newest intact checkpoint, its step), or (state, None).

  A checkpoint that cannot be read, or whose arrays differ from their saved digests, is
  named in one warning and the one before it is tried; the bad ones newer than the one
  restored are moved into `aside` (never deleted: a person may want them), so the run
  saves those steps again and pruning only ever removes checkpoints older than a good one.
  No intact checkpoint at all is an errors.InputError.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  bad = []
  for step in steps:
    try:
      metadata = manager.item_metadata(step)
      if metadata is None or 'params' not in metadata:  # evaluate.py could not read it
        problem = 'has no readable metadata (_METADATA)'
      else:
        restored = restore_state(manager, state, step)
        problem = _check_digest(restored, digests, step)
    except Exception as error:  # pylint: disable=broad-except  # any unreadable file
      problem = f'cannot be read ({_short(error)})'
    if problem is None:
      break
    logging.warning('Checkpoint %s/%d %s; trying the one before it.', manager.directory, step,
                    problem)
    bad.append(step)
  else:
    if steps:
      raise errors.InputError(
          f'No checkpoint in {manager.directory} is intact (steps {steps}: see the warnings '
          'above). Move the folder aside to start afresh, or restore it from a backup.')
    return state, None
  if bad:
    set_aside(manager, bad, aside)
  return restored, step


def restore_state(manager: ocp.CheckpointManager, state,
                  step: int | None = None):
  """`state` (unreplicated) with the values of checkpoint `step` (default: the latest)."""
  step = manager.latest_step() if step is None else step
  target = serialization.to_state_dict(jax.device_get(state))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  return serialization.from_state_dict(state, restored)


def init_variables_from(state, path: str):
  """Overwrites the variables found in the Orbax checkpoint at `path` (`python -m psp_jax.convert`).

  A converted ImageNet backbone replaces only `backbone`; a full PSPNet checkpoint
  replaces everything. Any key the model lacks, or any shape that differs, is an error.
  """
  loaded = load_variables(path)
  current = {'params': state.params, 'batch_stats': state.batch_stats}
  check_fits(loaded, current, f'config.init_from={path}', partial=True)
  loaded = traverse_util.flatten_dict(loaded)
  current = traverse_util.flatten_dict(current)
  current.update({k: jnp.asarray(v, current[k].dtype) for k, v in loaded.items()})
  variables = traverse_util.unflatten_dict(current)
  logging.info('Initialised %d of %d arrays from %s', len(loaded), len(current), path)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


def check_resumable(manager: ocp.CheckpointManager, model) -> None:
  """Raises ValueError, listing the shapes, if `manager`'s latest checkpoint is of another model.

  Reads the checkpoint's metadata only, so resuming with the wrong config fails in seconds,
  before anything compiles and before the workdir's config.json is overwritten. Takes the
  loop's own manager: with several processes, every one must make the same Orbax calls.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      saved = manager.item_metadata(step)
      saved = {key: saved[key] for key in ('params', 'batch_stats')}
    except Exception:  # pylint: disable=broad-except  # unreadable: restore_verified names it
      continue
    check_fits(saved, variable_shapes(model),
               f'The checkpoint to resume, {manager.directory} (step {step}),',
               fix='Train with the config in its config.json, or in another --workdir.')
    return


def load_trained_variables(workdir: str, which: str = 'best') -> tuple[Any, int]:
  """({'params', 'batch_stats'}, step) of the best (by mIoU) or latest checkpoint in `workdir`."""
  _ignore_io_after_a_failure()
  if which not in ('best', 'latest'):
    raise errors.InputError(f"which={which!r}: use 'best' or 'latest'.")
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'--workdir={workdir}: no such folder.')
  directory = os.path.join(workdir, 'best' if which == 'best' else 'checkpoints')
  missing = f'No checkpoint in {directory}: train first, or pass --checkpoint.'
  if which == 'best' and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    missing = (f'No checkpoint in {directory} (it is saved at evaluations, '
               'config.eval_every_steps): --which=latest takes the latest training checkpoint.')
  if not os.path.isdir(directory):
    raise FileNotFoundError(missing)
  # Reading never writes: no folder made, no checkpoint pruned or renamed.
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True))
  step = manager.best_step() if which == 'best' else manager.latest_step()
  if step is None:
    raise FileNotFoundError(missing)
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return {'params': restored['params'], 'batch_stats': restored['batch_stats']}, step
