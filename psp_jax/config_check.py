"""Config keys: every psp_jax config derives from psp_jax/config.py, whose keys are all there are.

A key outside that set is a typo or a knob psp_jax does not have; either way the run would go
on without it. `check_config` refuses a config file that sets one and psp_jax.cli a
`--config.key=...` override of one, each naming the closest known key, before any work starts.
`check_config` also holds config.model.num_classes to the dataset's number of classes.
"""

import difflib
from typing import Iterator

import ml_collections

from psp_jax import classes, config as base, errors


def schema() -> ml_collections.ConfigDict:
  """psp_jax.config.get_config(): the keys (and default values) of every config."""
  return base.get_config()


def key_paths(config, prefix: str = '') -> Iterator[str]:
  """'model', 'model.num_classes', ...: every field and sub-config as a dotted path."""
  for key, value in config.items():
    yield prefix + key
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from key_paths(value, f'{prefix}{key}.')


def unknown_keys(paths, known: set[str], prefix: str) -> list[str]:
  """`paths` not in `known` (below an unknown key, only it), each with the closest known path.

  prefix: how the user wrote them, 'config.' in a file or '--config.' on the command line.
  """
  unknown = []
  for path in paths:
    if path not in known and not any(path.startswith(u + '.') for u in unknown):
      unknown.append(path)
  described = []
  for path in unknown:
    closest = difflib.get_close_matches(path, sorted(known), n=1, cutoff=0.6)
    described.append(prefix + path + (f' (did you mean {prefix}{closest[0]}?)' if closest else ''))
  return described


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises errors.InputError on a key psp_jax/config.py lacks, or num_classes not the dataset's.

  Called first by train_loop.train_and_evaluate, evaluate.py and predict.py: it is cheap and
  comes before any data or model work, so a typo costs seconds, not a run.
  """
  known = set(key_paths(schema()))
  unknown = unknown_keys(key_paths(config), known, 'config.')
  if unknown:
    raise errors.InputError(
        f'Unknown config key{"s" * (len(unknown) > 1)} {", ".join(unknown)}. psp_jax reads '
        'only the keys of psp_jax/config.py, which every config derives from; any '
        'other key would be ignored. Fix the name in your config file.')
  class_names, _ = classes.for_config(config.dataset)
  if config.model.num_classes != len(class_names):
    raise errors.InputError(
        f'config.model.num_classes={config.model.num_classes}, but {config.dataset.name} has '
        f'{len(class_names)} classes ({", ".join(class_names[:3])}, ...); the classifier needs '
        f'one output per class. Set --config.model.num_classes={len(class_names)}.')
