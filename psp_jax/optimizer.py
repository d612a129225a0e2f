"""SGD with poly learning rate, as mmsegmentation and semseg train PSPNet."""

from typing import Any, Callable, Mapping

import jax
import optax
from flax import traverse_util


def create_learning_rate_fn(config: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Poly decay `(base - end) * (1 - t/T)**power + end` after an optional linear warm-up.

  mmseg's PolyLR (power 0.9, eta_min 1e-4) with `end_learning_rate`; semseg's poly
  with end 0. Warm-up rises linearly from `warmup_ratio * base` over `warmup_steps`.

  Args:
    config: `config.optimizer`: learning_rate, poly_power, end_learning_rate,
      warmup_steps, warmup_ratio.
    total_steps: T, the number of training steps.
  """
  base, warmup = config['learning_rate'], config['warmup_steps']
  if not 0 <= warmup < total_steps:
    raise ValueError(f'optimizer.warmup_steps={warmup} must be in [0, {total_steps}).')
  decay = optax.polynomial_schedule(init_value=base, end_value=config['end_learning_rate'],
                                    power=config['poly_power'],
                                    transition_steps=total_steps - warmup)
  if not warmup:
    return decay
  ramp = optax.linear_schedule(base * config['warmup_ratio'], base, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def _decay_mask(params):
  """True for conv kernels; False for BN scales/biases and conv biases."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: k[-1] == 'kernel' for k in flat})


def _group_labels(params):
  """'backbone' for the (usually pretrained) backbone, 'head' for the new layers."""
  return {k: jax.tree_util.tree_map(lambda _: 'backbone' if k == 'backbone' else 'head', v)
          for k, v in params.items()}


def create_optimizer(config: Mapping[str, Any],
                     learning_rate_fn: Callable[[int], Any]) -> optax.GradientTransformation:
  """PyTorch-style SGD: weight decay added to the gradient before momentum.

  `config.optimizer` fields: momentum, nesterov, weight_decay, decay_norm_and_bias
  (False skips BN parameters and biases), head_lr_mult (semseg uses 10 on the heads).
  """
  def sgd(scale):
    decay = optax.add_decayed_weights(
        config['weight_decay'], mask=None if config['decay_norm_and_bias'] else _decay_mask)
    return optax.chain(decay, optax.sgd(lambda step: scale * learning_rate_fn(step),
                                        momentum=config['momentum'] or None,
                                        nesterov=config['nesterov']))

  if config['head_lr_mult'] == 1.0:
    return sgd(1.0)
  return optax.multi_transform({'backbone': sgd(1.0), 'head': sgd(config['head_lr_mult'])},
                               _group_labels)
