"""Checkpoints on disk (Orbax): model variables, and the train state of a workdir.

Variables ({'params', 'batch_stats'}) are the format `python -m psp_jax.convert` writes,
training reads (`config.init_from`) and evaluation reads (`--checkpoint`). A training
workdir holds `checkpoints/` (the last k states) and `best/` (the best by validation mIoU).
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import jax_utils, serialization, traverse_util

from psp_jax import errors

_MAX_LISTED = 20  # mismatched arrays listed in the error; a different depth differs in hundreds


def save_variables(directory: str | os.PathLike, variables: Any, force: bool = False) -> str:
  """Writes `variables` to `directory` (which must not exist unless `force`). Returns its path."""
  path = os.path.abspath(os.fspath(directory))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, variables, force=force)
  checkpointer.wait_until_finished()
  return path


def load_variables(directory: str | os.PathLike) -> Any:
  """Reads variables written by `save_variables` as a tree of arrays."""
  path = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint directory at {path}.')
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


def managers(workdir: str, config) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
  """The last `keep_checkpoints` every `checkpoint_every_steps`, and the best by validation mIoU.

  Saves are synchronous: with several processes, Orbax's background commit threads met the
  processes' shutdown barrier in an order that aborted 2-process runs now and then.
  """
  latest = ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                           enable_async_checkpointing=False),
      item_handlers=ocp.StandardCheckpointHandler())
  best = ocp.CheckpointManager(
      os.path.join(workdir, 'best'),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m['mIoU'],
                                           best_mode='max', create=True,
                                           enable_async_checkpointing=False),
      item_handlers=ocp.StandardCheckpointHandler())
  return latest, best


def save_state(manager: ocp.CheckpointManager, step: int, state, metrics=None) -> None:
  """Saves the unreplicated state as host arrays (written once, by process 0)."""
  host_state = serialization.to_state_dict(jax.device_get(jax_utils.unreplicate(state)))
  manager.save(step, args=ocp.args.StandardSave(host_state), metrics=metrics)


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
  step = manager.latest_step()
  if step is None:
    return
  saved = manager.item_metadata(step)
  check_fits({key: saved[key] for key in ('params', 'batch_stats')}, variable_shapes(model),
             f'The checkpoint to resume, {manager.directory} (step {step}),',
             fix='Train with the config in its config.json, or in another --workdir.')


def load_trained_variables(workdir: str, which: str = 'best') -> tuple[Any, int]:
  """({'params', 'batch_stats'}, step) of the best (by mIoU) or latest checkpoint in `workdir`."""
  if which not in ('best', 'latest'):
    raise errors.InputError(f"which={which!r}: use 'best' or 'latest'.")
  directory = os.path.join(os.path.abspath(workdir), 'best' if which == 'best' else 'checkpoints')
  manager = ocp.CheckpointManager(directory)
  step = manager.best_step() if which == 'best' else manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {directory}: train first, or pass --checkpoint.')
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return {'params': restored['params'], 'batch_stats': restored['batch_stats']}, step
