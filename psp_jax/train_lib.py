"""Train state, the pure pmappable train step, and the training loop (flax `examples/imagenet` style)."""

import functools
import os
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds
from absl import logging
from clu import metric_writers
from flax import jax_utils, serialization, traverse_util
from flax.training import train_state
from jax.experimental import multihost_utils

from psp_jax import (checkpoint, config_check, datasets, evaluation, inference, input_pipeline,
                     losses, optimizer, resumable_iterator, visualize)
from psp_jax.preemption import PreemptionWatch
from psp_jax.models.pspnet import PSPNet, build_model


class TrainState(train_state.TrainState):
  """Params, optimizer state and step, plus BN statistics and the dropout key."""
  batch_stats: Any
  dropout_rng: jax.Array


def create_train_state(model: PSPNet, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, int, int, int]) -> TrainState:
  """Initialises variables for images of `image_shape` ([B, H, W, 3]) on the default device."""
  init_rng, dropout_rng = jax.random.split(rng)
  variables = jax.jit(model.init)(init_rng, jnp.zeros(image_shape, jnp.float32))
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'], dropout_rng=dropout_rng)


def train_step(state: TrainState, batch: dict[str, jnp.ndarray],
               learning_rate_fn: Callable[[jnp.ndarray], jnp.ndarray], *,
               aux_weight: float = 0.4, loss_average: str = 'valid',
               align_corners: bool = False, axis_name: str | None = 'batch'
               ) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One SGD step on `batch` = {'image': [b, H, W, 3] float, 'label': [b, H, W] int32}.

  Meant for `jax.pmap(..., axis_name='batch', donate_argnums=(0,))` with a model built
  with `bn_axis_name='batch'`: BN statistics are then synchronised across devices,
  and gradients and metrics are `lax.pmean`-ed. With `axis_name=None` it is the same
  step on one device (used to prove the two agree).
  """
  step_rng = jax.random.fold_in(state.dropout_rng, state.step)
  if axis_name is not None:  # each device drops out different channels
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))

  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'], train=True,
        rngs={'dropout': step_rng}, mutable=['batch_stats'])
    loss, metrics = losses.segmentation_loss(
        outputs, batch['label'], aux_weight=aux_weight, average=loss_average,
        align_corners=align_corners, axis_name=axis_name)
    return loss, (metrics, updates['batch_stats'])

  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics['learning_rate'] = learning_rate_fn(state.step)
  metrics['grad_norm'] = optax.global_norm(grads)
  return new_state, metrics


def pmapped_train_step(learning_rate_fn, **kwargs):
  """`train_step` pmapped over local devices with the state donated."""
  return jax.pmap(functools.partial(train_step, learning_rate_fn=learning_rate_fn,
                                    axis_name='batch', **kwargs),
                  axis_name='batch', donate_argnums=(0,))


# ---------------------------------------------------------------------------- the loop


def _checkpoint_managers(workdir: str, config) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
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


def _save(manager: ocp.CheckpointManager, step: int, state: TrainState, metrics=None) -> None:
  """Saves the unreplicated state as host arrays (written once, by process 0)."""
  host_state = serialization.to_state_dict(jax.device_get(jax_utils.unreplicate(state)))
  manager.save(step, args=ocp.args.StandardSave(host_state), metrics=metrics)


def restore_state(manager: ocp.CheckpointManager, state: TrainState,
                  step: int | None = None) -> TrainState:
  """`state` (unreplicated) with the values of checkpoint `step` (default: the latest)."""
  step = manager.latest_step() if step is None else step
  target = serialization.to_state_dict(jax.device_get(state))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  return serialization.from_state_dict(state, restored)


def init_variables_from(state: TrainState, path: str) -> TrainState:
  """Overwrites the variables found in the Orbax checkpoint at `path` (`python -m psp_jax.convert`).

  A converted ImageNet backbone replaces only `backbone`; a full PSPNet checkpoint
  replaces everything. Any key the model lacks, or any shape that differs, is an error.
  """
  loaded = checkpoint.load_variables(path)
  current = {'params': state.params, 'batch_stats': state.batch_stats}
  checkpoint.check_fits(loaded, current, f'config.init_from={path}', partial=True)
  loaded = traverse_util.flatten_dict(loaded)
  current = traverse_util.flatten_dict(current)
  current.update({k: jnp.asarray(v, current[k].dtype) for k, v in loaded.items()})
  variables = traverse_util.unflatten_dict(current)
  logging.info('Initialised %d of %d arrays from %s', len(loaded), len(current), path)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


def variable_shapes(model_config: ml_collections.ConfigDict) -> Any:
  """{'params', 'batch_stats'} of the model config.model builds, as shapes: traced, not run."""
  image = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)  # variables do not depend on it
  return jax.eval_shape(build_model(model_config).init, jax.random.PRNGKey(0), image)


def check_resumable(manager: ocp.CheckpointManager, model_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError, listing the shapes, if `manager`'s latest checkpoint is of another model.

  Reads the checkpoint's metadata only, so resuming with the wrong config fails in seconds,
  before anything compiles and before the workdir's config.json is overwritten. Takes the
  loop's own manager: with several processes, every one must make the same Orbax calls.
  """
  step = manager.latest_step()
  if step is None:
    return
  saved = manager.item_metadata(step)
  checkpoint.check_fits({key: saved[key] for key in ('params', 'batch_stats')},
                        variable_shapes(model_config),
                        f'The checkpoint to resume, {manager.directory} (step {step}),',
                        fix='Train with the config in its config.json, or in another --workdir.')


def check_writable(workdir: str) -> None:
  """Creates `workdir`; an OSError naming it if a file cannot be written there."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as error:
    raise OSError(f'--workdir={workdir} is not a writable folder ({error.strerror or error}): '
                  'checkpoints, TensorBoard logs and config.json go there. Pick another '
                  '--workdir, or make this one writable.') from error


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  history = jax.device_get(history)
  return {k: float(np.mean([h[k][0] for h in history])) for k in history[0]}


class PredictionPreview:
  """The first validation images, their ground truth and the current prediction, in colour.

  Whole-image prediction with config.test's resize; the network compiles once per image
  shape, the first time only, since the variables are an argument of the jitted function.
  """

  def __init__(self, model: PSPNet, builder, config, dataset_module):
    decode = datasets.decoder(dataset_module)
    count = config.get('num_preview_images', 3)
    split = builder.as_dataset(split=config.dataset.eval_split).take(count).map(decode)
    self.examples = list(datasets.name_corrupt_images(
        tfds.as_numpy(split), builder, config.dataset.eval_split)) if count else []
    self.predictor = inference.Predictor(model, None, size_divisor=config.test.size_divisor)
    self.test, self.palette = config.test, dataset_module.PALETTE

  def __call__(self, variables) -> dict[str, np.ndarray]:
    self.predictor.variables = variables
    panels = {}
    for i, (image, label) in enumerate(self.examples):
      prediction = inference.predict(self.predictor, image, resize=self.test.resize,
                                     test_scale=self.test.test_scale,
                                     base=self.test.base_size).argmax(-1)
      panels[f'eval/prediction_{i}'] = visualize.side_by_side(
          image, label[..., 0], prediction, self.palette)[None]
    return panels


def check_finite(pending: list, manager: ocp.CheckpointManager) -> None:
  """Raises FloatingPointError at the first step of `pending` whose loss or gradient is not finite.

  `pending` holds (step, metrics) of the steps not checked yet, and is emptied. The loop
  checks before every checkpoint, so a poisoned state is never saved.
  """
  for step, metrics in jax.device_get(pending):
    for name in ('loss', 'aux_loss', 'grad_norm'):
      if name in metrics and not np.all(np.isfinite(metrics[name])):
        raise FloatingPointError(
            f'Step {step}: train/{name} is {np.ravel(metrics[name])[0]}. Stopped without '
            f'saving; the last good checkpoint is step {manager.latest_step()} in '
            f'{manager.directory}. Lower config.optimizer.learning_rate or check the data, '
            'then rerun to resume from it.')
  pending.clear()


def _train_batches(config, builder, decode, per_device_batch: int, workdir: str,
                   start_step: int) -> resumable_iterator.ResumableIterator:
  """The training stream, at the position saved with checkpoint `start_step` when resuming."""
  directory = os.path.join(workdir, 'data_state')
  resume = start_step > 0 and resumable_iterator.saved(directory, start_step)
  if start_step and not resume:
    # A checkpoint without a saved position (older psp_jax): a fresh, seeded stream
    # rather than replaying the first examples.
    logging.warning('No data stream position saved with step %d: continuing with a new '
                    'stream; the run will not be bit-identical to an uninterrupted one.',
                    start_step)
  dataset = input_pipeline.create_split(
      builder, config.dataset.train_split, config.augment, per_device_batch, train=True,
      seed=config.seed if resume else config.seed + start_step, decode=decode)
  batches = resumable_iterator.ResumableIterator(dataset, directory)
  if resume:
    batches.restore(start_step)
  return batches


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the last eval.

  One process per host; each reads its own shard of the data and drives its local
  devices with the pmapped step. Checkpoints go to `workdir/checkpoints` (last k) and
  `workdir/best` (best validation mIoU), metrics to TensorBoard files in `workdir`.
  """
  # Bad input fails here, in seconds, before any data or model work.
  config_check.check_config(config)
  if config.batch_size % jax.device_count():
    raise ValueError(f'config.batch_size={config.batch_size} must be divisible by the '
                     f'{jax.device_count()} devices.')
  datasets.check_prepared(config.dataset)
  workdir = os.path.abspath(workdir)  # Orbax writes to absolute paths only
  check_writable(workdir)
  latest, best = _checkpoint_managers(workdir, config)
  check_resumable(latest, config.model)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  per_device_batch = config.batch_size // jax.device_count()

  dataset_module = datasets.dataset_module(config.dataset.name)
  builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir)
  if config.dataset.prepare:  # process 0 first, so that a shared data_dir is written once
    if jax.process_index() == 0:
      builder.download_and_prepare()
    multihost_utils.sync_global_devices('dataset prepared')
    # A builder made before the data existed does not read it afterwards: make it again.
    builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir)
    builder.download_and_prepare()
  decode = datasets.decoder(dataset_module)

  model = build_model(config.model, bn_axis_name='batch' if config.sync_bn else None)
  total_steps = config.num_train_steps
  learning_rate_fn = optimizer.create_learning_rate_fn(config.optimizer, total_steps)
  tx = optimizer.create_optimizer(config.optimizer, total_steps)
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed),
                             (1, *config.augment.crop_size, 3))
  if latest.latest_step() is not None:
    state = restore_state(latest, state)
    logging.info('Resumed from %s at step %d', latest.directory, int(state.step))
  elif config.init_from:
    state = init_variables_from(state, config.init_from)
  start_step = int(state.step)
  state = jax_utils.replicate(state)

  train_iter = _train_batches(config, builder, decode, per_device_batch, workdir, start_step)
  batches = datasets.name_corrupt_images(train_iter, builder, config.dataset.train_split)
  p_train_step = pmapped_train_step(
      learning_rate_fn, aux_weight=config.aux_weight, loss_average=config.loss_average,
      align_corners=config.model.align_corners)
  preview = PredictionPreview(model, builder, config, dataset_module)

  def run_eval(step):
    """evaluate.py's protocol (config.test) on the validation split."""
    variables = jax_utils.unreplicate({'params': state.params, 'batch_stats': state.batch_stats})
    metrics, _ = evaluation.evaluate_config(config, variables, config.dataset.eval_split)
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    if jax.process_index() == 0 and config.get('num_preview_images', 3):
      writer.write_images(step, preview(variables))
    logging.info('step %d: validation mIoU %.2f  mAcc %.2f  aAcc %.2f', step, metrics['mIoU'],
                 metrics['mAcc'], metrics['aAcc'])
    return metrics

  def save(step):
    """The data stream's position, then the state (Orbax commits it last, atomically)."""
    check_finite(unchecked, latest)
    train_iter.save(step)
    _save(latest, step, state)
    train_iter.prune(latest.all_steps())

  logging.info('Training %s for %d steps from step %d, global batch %d on %d devices.',
               config.dataset.name, total_steps, start_step, config.batch_size, jax.device_count())
  preemption = PreemptionWatch()
  history, unchecked, metrics = [], [], {}
  last_log = (start_step, time.time())
  try:
    for step in range(start_step + 1, total_steps + 1):
      state, step_metrics = p_train_step(state, next(batches))
      history.append(step_metrics)
      unchecked.append((step, step_metrics))
      if step % config.log_every_steps == 0 or step == total_steps:
        check_finite(unchecked, latest)
        summary = {f'train/{k}': v for k, v in _mean_metrics(history).items()}
        elapsed = time.time() - last_log[1]
        steps_per_sec = (step - last_log[0]) / elapsed
        summary['train/images_per_sec'] = steps_per_sec * config.batch_size
        writer.write_scalars(step, summary)
        eta = (total_steps - step) / steps_per_sec
        logging.info('step %d/%d (%.0f%%)  loss %.4f  aux %.4f  acc %.3f  lr %.2e  '
                     '%.1f img/s  ETA %dm%02ds', step, total_steps, 100 * step / total_steps,
                     summary['train/loss'], summary['train/aux_loss'],
                     summary['train/pixel_accuracy'], summary['train/learning_rate'],
                     summary['train/images_per_sec'], eta // 60, eta % 60)
        history, last_log = [], (step, time.time())
      is_last = step == total_steps
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or is_last):
        check_finite(unchecked, latest)
        metrics = run_eval(step)
        _save(best, step, state, metrics={'mIoU': metrics['mIoU']})
      if preemption.reached(step):
        save(step)
        logging.warning('Preempted (SIGTERM): saved step %d in %s; rerun the same command to '
                        'resume.', step, latest.directory)
        break
      if step % config.checkpoint_every_steps == 0 or is_last:
        save(step)
  finally:
    preemption.close()
  latest.wait_until_finished()
  best.wait_until_finished()
  writer.flush()
  return metrics


def load_trained_variables(workdir: str, which: str = 'best') -> tuple[Any, int]:
  """({'params', 'batch_stats'}, step) of the best (by mIoU) or latest checkpoint in `workdir`."""
  if which not in ('best', 'latest'):
    raise ValueError(f"which={which!r}: use 'best' or 'latest'.")
  directory = os.path.join(os.path.abspath(workdir), 'best' if which == 'best' else 'checkpoints')
  manager = ocp.CheckpointManager(directory)
  step = manager.best_step() if which == 'best' else manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {directory}: train first, or pass --checkpoint.')
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  return {'params': restored['params'], 'batch_stats': restored['batch_stats']}, step
