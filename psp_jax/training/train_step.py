"""Train state and the pure, pmappable train step (flax `examples/imagenet` style)."""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import jax_utils
from flax.training import train_state

from psp_jax.base import spec
from psp_jax.training import losses


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus BN statistics and the dropout key."""
  batch_stats: Any
  dropout_rng: jax.Array


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, int, int, int]) -> TrainState:
  """Initialises `model`'s variables for images of `image_shape` ([B, H, W, 3])."""
  init_rng, dropout_rng = jax.random.split(rng)
  variables = jax.jit(model.init)(init_rng, jnp.zeros(image_shape, jnp.float32))
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'], dropout_rng=dropout_rng)


def train_step(state: TrainState, batch: dict[str, jnp.ndarray],
               learning_rate_fn: Callable[[jnp.ndarray], jnp.ndarray], *,
               aux_weight: float = 0.4, loss_average: str = 'valid',
               align_corners: bool = False, segm_downsampling_rate: int = 1,
               axis_name: str | None = 'batch', cross_entropy_sums: Callable | None = None,
               class_weight: tuple[float, ...] | None = None
               ) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One SGD step on a batch (spec: image [b, H, W, 3] float, label [b, H, W] int32).

  Meant for `jax.pmap(..., axis_name='batch', donate_argnums=(0,))` with a model built
  with `bn_axis_name='batch'`: BN statistics are then synchronised across devices,
  and gradients and metrics are `lax.pmean`-ed. With `axis_name=None` it is the same
  step on one device. `cross_entropy_sums`: the loss kernel (psp_jax.models.kernels), or None;
  `segm_downsampling_rate`, `class_weight`: see losses.segmentation_loss.
  """
  step_rng = jax.random.fold_in(state.dropout_rng, state.step)
  if axis_name is not None:  # each device drops out different channels
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))

  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch[spec.IMAGE], train=True,
        rngs={'dropout': step_rng}, mutable=['batch_stats'])
    loss, metrics = losses.segmentation_loss(
        outputs, batch[spec.LABEL], aux_weight=aux_weight, average=loss_average,
        align_corners=align_corners, segm_downsampling_rate=segm_downsampling_rate,
        axis_name=axis_name, cross_entropy_sums=cross_entropy_sums, class_weight=class_weight)
    return loss, (metrics, updates['batch_stats'])

  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics['learning_rate'] = learning_rate_fn(state.step)
  metrics['grad_norm'] = optax.global_norm(grads)
  return new_state, metrics


def replicate(tree: Any, axis_name: str = 'batch') -> Any:
  """`tree` copied to every local device, placed as `jax.pmap(axis_name=...)` places outputs.

  jax >= 0.8's pmap keys its compilation cache on the input shardings, and
  flax's `jax_utils.replicate` gives another mesh axis than the step's outputs have: the
  step's second call would compile it again.
  """
  return jax.pmap(lambda x: x, axis_name=axis_name)(jax_utils.replicate(tree))


def pmapped_train_step(learning_rate_fn, devices=None, **kwargs):
  """`train_step` pmapped over `devices` (the local ones if None) with the state donated."""
  return jax.pmap(functools.partial(train_step, learning_rate_fn=learning_rate_fn,
                                    axis_name='batch', **kwargs),
                  axis_name='batch', donate_argnums=(0,), devices=devices)


def pmapped_train_step_for(config, learning_rate_fn, cross_entropy_sums, devices=None):
  """The pmapped step train.py runs for `config` (loss weights and averaging, resizes)."""
  return pmapped_train_step(learning_rate_fn, devices=devices, aux_weight=config.aux_weight,
                            loss_average=config.loss_average,
                            align_corners=config.model.align_corners,
                            segm_downsampling_rate=config.segm_downsampling_rate,
                            cross_entropy_sums=cross_entropy_sums,
                            class_weight=config.class_weight)
