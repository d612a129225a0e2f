"""SGD with poly learning rate, as mmsegmentation and semseg train PSPNet."""

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from psp_jax.base import errors


SCHEDULES = ('mmseg', 'semseg')


def create_learning_rate_fn(config: Mapping[str, Any], total_steps: int,
                            lr_mult: float = 1.0) -> optax.Schedule:
  """The learning rate of each step t = 0, 1, ..., total_steps - 1, as the recipe's trainer sets it.

  `config.schedule` picks whose convention:
  - 'mmseg': mmengine's `LinearLR(start_factor=warmup_ratio, begin=0, end=warmup_steps)`
    (if warmup_steps) then `PolyLR(eta_min=end_learning_rate, power=poly_power,
    begin=warmup_steps, end=total_steps)`. Each runs its own T = end - begin - 1 steps,
    so warm-up reaches the base rate at step warmup_steps - 1 and the decay reaches
    eta_min at the last step: lr(t) = (base - eta_min) * (1 - (t - begin) / T)**power
    + eta_min. mmengine's schedulers are chained, so the decay starts from where the
    warm-up ended. A group with `lr_mult` starts from lr_mult * base but decays to the
    same eta_min, as mmseg's paramwise lr_mult.
  - 'semseg': hszhao/semseg's `poly_learning_rate(base_lr, curr_iter, max_iter)`,
    set after each iteration with curr_iter counted from 1, so step t trains at
    base * (1 - t / total_steps)**power (step 0 at base, never 0); no warm-up and no
    floor. Heads train at lr_mult times that (semseg: 10).

  Args:
    config: `config.optimizer`: schedule, learning_rate, poly_power, end_learning_rate,
      warmup_steps, warmup_ratio.
    total_steps: the number of training steps (mmseg's max_iters).
    lr_mult: the parameter group's multiplier of the base rate.
  """
  kind, warmup = config['schedule'], config['warmup_steps']
  base, power, floor = lr_mult * config['learning_rate'], config['poly_power'], config['end_learning_rate']
  if kind not in SCHEDULES:
    raise errors.InputError(f'config.optimizer.schedule={kind!r}: use one of {SCHEDULES}.')
  # optax counts steps in int32, which JAX divides in float32 even with x64 enabled: the
  # schedule computes in the default float dtype (float64 under x64), as PyTorch's does.
  as_float = lambda step: jnp.asarray(step, float)
  if kind == 'semseg':
    if warmup or floor:
      raise errors.InputError(
          f'config.optimizer.schedule=\'semseg\' has no warm-up and no floor, but '
          f'warmup_steps={warmup} and end_learning_rate={floor}: set them to 0, or use '
          "schedule='mmseg' (LinearLR + PolyLR).")
    return lambda step: base * (1 - as_float(step) / total_steps) ** power
  if not 0 <= warmup < total_steps:
    raise errors.InputError(f'optimizer.warmup_steps={warmup} must be in [0, {total_steps}).')

  def linear(step):  # LinearLR(start_factor=warmup_ratio, end_factor=1, end=warmup)
    ratio, span = config['warmup_ratio'], warmup - 1
    return base * (ratio + (1 - ratio) * jnp.minimum(as_float(step), span) / span) if span else base * ratio

  start = linear(warmup - 1) if warmup else base
  span = total_steps - warmup - 1

  def poly(step):
    progress = jnp.minimum(as_float(step) - warmup, span) / span if span else 1.0
    # Under jit XLA divides by the constant span as a multiply by its reciprocal, so at the
    # last step progress can exceed 1 by an ulp: a negative base to a fractional power is NaN.
    return (start - floor) * jnp.maximum(1 - progress, 0.0) ** power + floor

  if not warmup:
    return poly
  return lambda step: jnp.where(step < warmup, linear(step), poly(step))


def _decay_mask(params):
  """True for conv kernels; False for BN scales/biases and conv biases."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: k[-1] == 'kernel' for k in flat})


def _group_labels(params):
  """'backbone' for the (usually pretrained) backbone, 'head' for the new layers."""
  return {k: jax.tree_util.tree_map(lambda _: 'backbone' if k == 'backbone' else 'head', v)
          for k, v in params.items()}


def create_optimizer(config: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
  """PyTorch-style SGD: weight decay added to the gradient before momentum.

  `config.optimizer` fields: momentum, nesterov, weight_decay, decay_norm_and_bias
  (False skips BN parameters and biases), head_lr_mult (semseg uses 10 on the heads), and
  those of `create_learning_rate_fn`, which gives each group its schedule.
  """
  def sgd(lr_mult):
    decay = optax.add_decayed_weights(
        config['weight_decay'], mask=None if config['decay_norm_and_bias'] else _decay_mask)
    return optax.chain(decay, optax.sgd(create_learning_rate_fn(config, total_steps, lr_mult),
                                        momentum=config['momentum'] or None,
                                        nesterov=config['nesterov']))

  if config['head_lr_mult'] == 1.0:
    return sgd(1.0)
  return optax.multi_transform({'backbone': sgd(1.0), 'head': sgd(config['head_lr_mult'])},
                               _group_labels)
