"""Config keys and values, checked in one place before any work: every psp_jax config derives
from psp_jax/config/__init__.py, whose keys are all there are.

A key outside that set is a typo or a knob psp_jax does not have; either way the run would go
on without it. `check_config` refuses a config file that sets one and psp_jax.tools.cli a
`--config.key=...` override of one, each naming the closest known key, before any work starts.
`check_config` also holds config.model.num_classes to the dataset's number of classes and
every value to what it can be (`check_values`): a zero interval, a negative learning rate or
a crop of one number fails in the first second, not after data loading and compilation.
"""

import difflib
import numbers
from typing import Any, Callable, Iterator

import ml_collections

from psp_jax import config as base
from psp_jax.base import errors
from psp_jax.data import catalog


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


def _number(value: Any, integer: bool) -> bool:
  kind = numbers.Integral if integer else numbers.Real
  return isinstance(value, kind) and not isinstance(value, bool)


# key -> (is the value allowed, what is allowed). Model fields are PSPNet's own checks.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {}


def _rule(keys: str, allowed: Callable[[Any], bool], description: str) -> None:
  for key in keys.split():
    _RULES[key] = (allowed, description)


def _at_least(low: float, integer: bool = True) -> Callable[[Any], bool]:
  return lambda v: _number(v, integer) and v >= low


def _pair(allowed: Callable[[Any], bool]) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(map(allowed, v))


def _unit(low_open: bool = False) -> Callable[[Any], bool]:
  return lambda v: _number(v, False) and (0 < v if low_open else 0 <= v) and v <= 1


_rule('seed', lambda v: _number(v, True), 'a whole number')
_rule('batch_size num_train_steps log_every_steps checkpoint_every_steps keep_checkpoints '
      'segm_downsampling_rate test.window_batch', _at_least(1), 'a whole number >= 1')
_rule('eval_every_steps num_preview_images optimizer.warmup_steps', _at_least(0),
      'a whole number >= 0 (0: none)')
_rule('optimizer.learning_rate optimizer.head_lr_mult optimizer.poly_power',
      lambda v: _number(v, False) and v > 0, 'a number > 0')
_rule('optimizer.weight_decay optimizer.end_learning_rate aux_weight augment.rotate_degrees',
      _at_least(0, integer=False), 'a number >= 0')
_rule('optimizer.momentum', lambda v: _number(v, False) and 0 <= v < 1, 'a number in [0, 1)')
_rule('optimizer.warmup_ratio augment.cat_max_ratio', _unit(low_open=True),
      'a number in (0, 1]')
_rule('augment.rotate_prob augment.blur_prob', _unit(), 'a probability in [0, 1]')
_rule('augment.crop_size test.crop_size test.stride', _pair(_at_least(1)),
      '(height, width): two whole numbers >= 1')
_rule('augment.resize_scale', lambda v: v is None or _pair(_at_least(1))(v),
      "(long, short): two whole numbers >= 1, or None for the images' own size")
_rule('augment.scale_range', lambda v: _pair(lambda x: _number(x, False) and x > 0)(v)
      and v[0] <= v[1], '(low, high), 0 < low <= high')
_rule('test.scales', lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(
    _number(x, False) and x > 0 for x in v), 'one or more numbers > 0, e.g. (1.0,)')
_rule('loss_average', lambda v: v in ('valid', 'all'), "'valid' or 'all'")
_rule('class_weight', lambda v: v is None or (
    isinstance(v, (tuple, list)) and all(_number(x, False) and x >= 0 for x in v) and any(v)),
      'None, or one number >= 0 per class, not all 0')


def check_values(config: ml_collections.ConfigDict) -> None:
  """Raises errors.InputError naming the first key whose value cannot work, and what can."""
  for key, (allowed, description) in _RULES.items():
    value = config
    for part in key.split('.'):
      value = value[part]
    if not allowed(value):
      raise errors.InputError(f'config.{key}={value!r}: use {description}.')
  steps, warmup = config.num_train_steps, config.optimizer.warmup_steps
  if warmup >= steps:
    raise errors.InputError(f'config.optimizer.warmup_steps={warmup} must be below '
                            f'config.num_train_steps={steps}.')


def check_config(config: ml_collections.ConfigDict, devices: int | None = None) -> None:
  """Raises errors.InputError on a key psp_jax/config/__init__.py lacks, a value
  `check_values` refuses, num_classes not the dataset's, or (given the `devices` that
  train it) a batch they cannot share.

  The one place a config's keys and values are checked, called first by
  train_loop.train_and_evaluate, evaluate.py, predict.py and the tools: it is cheap and
  comes before any data or model work, so a typo costs seconds, not a run. The model
  (`build_model`) and the test protocol (`TestProtocol`) check their own fields when
  made, for research code that makes them without a config; the tools make both next.
  """
  known = set(key_paths(schema()))
  unknown = unknown_keys(key_paths(config), known, 'config.')
  if unknown:
    raise errors.InputError(
        f'Unknown config key{"s" * (len(unknown) > 1)} {", ".join(unknown)}. psp_jax reads '
        'only the keys of psp_jax/config/__init__.py, which every config derives from; any '
        'other key would be ignored. Fix the name in your config file.')
  check_values(config)
  if config.segm_downsampling_rate not in (1, config.model.output_stride):
    raise errors.InputError(
        f'config.segm_downsampling_rate={config.segm_downsampling_rate}: use 1 (logits upsampled '
        f'to the labels) or the model\'s output stride, {config.model.output_stride} (labels '
        'downsampled to the logits, as CSAIL).')
  if devices and config.batch_size % devices:
    raise errors.InputError(f'config.batch_size={config.batch_size} must be divisible by the '
                            f'{devices} devices.')
  class_names, _ = catalog.class_names_and_palette(config.dataset)
  if config.model.num_classes != len(class_names):
    raise errors.InputError(
        f'config.model.num_classes={config.model.num_classes}, but {config.dataset.name} has '
        f'{len(class_names)} classes ({", ".join(class_names[:3])}, ...); the classifier needs '
        f'one output per class. Set --config.model.num_classes={len(class_names)}.')
  if config.class_weight is not None and len(config.class_weight) != len(class_names):
    raise errors.InputError(
        f'config.class_weight has {len(config.class_weight)} values, but {config.dataset.name} '
        f'has {len(class_names)} classes: give one weight per class, in the order '
        f'{", ".join(class_names[:3])}, ...')
