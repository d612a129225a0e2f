"""The training loop: data, pmapped steps, logging, evaluation and checkpoints of one run."""

import errno
import os
import shutil
import tempfile
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from flax import jax_utils

from psp_jax.base import errors
from psp_jax.config import config_check
from psp_jax.data import augment, resumable_iterator
from psp_jax.data.dataset import Dataset
from psp_jax.evaluation import evaluator, inference, preview
from psp_jax.models import kernels
from psp_jax.models.pspnet import build_model
from psp_jax.training import checkpoint, optimizer, train_step, workdir_lock
from psp_jax.training.preemption import PreemptionWatch


def log_devices() -> None:
  """Says what the steps run on; warns if JAX_PLATFORMS asked for an accelerator and JAX
  fell back to the CPU (e.g. 'cuda,cpu' with the CPU-only jaxlib of `pip install .`)."""
  devices = jax.local_devices()
  logging.info('JAX process %d/%d (jax %s): %d local %s devices (%s), %d in all.',
               jax.process_index(), jax.process_count(), jax.__version__, len(devices),
               devices[0].platform, devices[0].device_kind, jax.device_count())
  asked = [p for p in os.environ.get('JAX_PLATFORMS', '').split(',') if p.strip()
           not in ('', 'cpu')]
  if asked and all(d.platform == 'cpu' for d in devices):
    logging.warning('JAX_PLATFORMS=%s asks for %s, but JAX found only CPU devices: training '
                    'runs on the CPU. Install the accelerator\'s extra (pip install -e '
                    '".[cuda12]" or ".[tpu]"; README "Installing").',
                    os.environ['JAX_PLATFORMS'], ', '.join(asked))


def check_writable(workdir: str) -> None:
  """Creates `workdir`; an InputError naming it if a file cannot be written there."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir) as probe:  # data blocks: a full disk refuses them
      probe.write(b'\0' * 65536)
      probe.flush()
      os.fsync(probe.fileno())
  except OSError as error:
    raise errors.InputError(
        f'--workdir={workdir} is not a writable folder ({error.strerror or error}): '
        'checkpoints, TensorBoard logs and config.json go there. Pick another --workdir, or '
        'make this one writable.') from error


def disk_full(error: BaseException) -> bool:
  """Whether `error` (an OSError, or TensorStore's error text through Orbax) is ENOSPC."""
  return (getattr(error, 'errno', None) == errno.ENOSPC
          or 'No space left on device' in str(error))


def remove_partial_checkpoints(directory: str) -> None:
  """Orbax's temporary folders of saves that did not finish (never read, but never kept)."""
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if '.orbax-checkpoint-tmp' in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def check_finite(pending: list, manager) -> None:
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


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  history = jax.device_get(history)
  return {k: float(np.mean([h[k][0] for h in history])) for k in history[0]}


def _variables(state) -> dict:
  """{'params', 'batch_stats'} of the replicated state, on the host's first device."""
  return jax_utils.unreplicate({'params': state.params, 'batch_stats': state.batch_stats})


def _train_batches(config, data: Dataset, per_device_batch: int, workdir: str,
                   start_step: int) -> resumable_iterator.ResumableIterator:
  """The training stream, at the position saved with checkpoint `start_step` when resuming."""
  directory = os.path.join(workdir, 'data_state')
  position = resumable_iterator.saved_position(directory, start_step) if start_step else 0
  if position is None:
    # A checkpoint without a saved position (one from before positions were saved, or
    # whose position was deleted): the stream of an unchanged batch size.
    position = start_step * per_device_batch
    logging.warning('No data stream position saved with step %d: resuming at %d examples per '
                    'device (step x per-device batch), exact if the batch size is unchanged.',
                    start_step, position)

  stream = data.train_stream(config.augment, per_device_batch, config.seed, position)
  return resumable_iterator.ResumableIterator(stream, per_device_batch, directory, position)


def warn_if_every_crop_is_padded(config, data: Dataset) -> str | None:
  """Logs (and returns) a warning when the training crop is larger than the first training
  image even at the largest rescale: every crop would then be mostly padding, which
  is ignored, so the run would learn from a fraction of each crop without a word."""
  image, _ = next(data.examples(config.dataset.train_split, count=1))
  height, width = (int(n) for n in image.shape[:2])
  augment_config = config.augment
  top = augment.largest_size(height, width, augment_config.scale_range,
                             augment_config.resize_scale)
  crop = tuple(augment_config.crop_size)
  if crop[0] <= top[0] and crop[1] <= top[1]:
    return None
  padded = 1 - min(crop[0], top[0]) * min(crop[1], top[1]) / (crop[0] * crop[1])
  message = (f'config.augment.crop_size={crop} is larger than the training images: the first, '
             f'{height}x{width}, is at most {top[0]}x{top[1]} after rescaling (resize_scale='
             f'{augment_config.resize_scale}, scale_range={tuple(augment_config.scale_range)}), '
             f'so at least {padded:.0%} of each crop is ignored padding. Use a crop of at most '
             f'{min(crop[0], top[0])}x{min(crop[1], top[1])}, or rescale the images up.')
  logging.warning(message)
  return message


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the last eval.

  One process per host; each reads its own shard of the data and drives its local
  devices with the pmapped step. Checkpoints go to `workdir/checkpoints` (last k) and
  `workdir/best` (best validation mIoU), metrics to TensorBoard files in `workdir`.
  """
  # Bad input fails here, in seconds, before any data or model work.
  config_check.check_config(config, devices=jax.device_count())
  log_devices()
  # The speed rewrites for the devices the steps run on (config.model.kernels).
  platform = jax.local_devices()[0].platform
  mode = kernels.resolve(config.model.kernels, platform)
  model = build_model(config.model, bn_axis_name='batch' if config.sync_bn else None,
                      kernels=mode)
  test = inference.TestProtocol.from_config(config.test)
  data = Dataset(config.dataset)
  data.check_prepared()
  workdir = os.path.abspath(workdir)  # Orbax writes to absolute paths only
  check_writable(workdir)
  with workdir_lock.hold(workdir):  # before anything is written there
    return _train(config, workdir, model, mode, platform, test, data)


def _train(config: ml_collections.ConfigDict, workdir: str, model, mode: str, platform: str,
           test: inference.TestProtocol, data: Dataset) -> dict[str, float]:
  """train_and_evaluate's run itself, in a workdir this run holds."""
  latest, best = checkpoint.managers(workdir)
  checkpoint.check_resumable(latest, model)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  per_device_batch = config.batch_size // jax.device_count()
  data.prepare()
  if jax.process_index() == 0:
    warn_if_every_crop_is_padded(config, data)

  total_steps = config.num_train_steps
  learning_rate_fn = optimizer.create_learning_rate_fn(config.optimizer, total_steps)
  tx = optimizer.create_optimizer(config.optimizer, total_steps)
  state = train_step.create_train_state(model, tx, jax.random.PRNGKey(config.seed),
                                        (1, *config.augment.crop_size, 3))
  digests = os.path.join(workdir, checkpoint.DIGESTS)
  bad_checkpoints = os.path.join(workdir, 'bad_checkpoints')
  if latest.latest_step() is not None:
    state, _ = checkpoint.restore_verified(latest, state, digests, bad_checkpoints)
    logging.info('Resumed from %s at step %d', latest.directory, int(state.step))
  elif config.init_from:
    state = checkpoint.init_variables_from(state, config.init_from)
  start_step = int(state.step)
  state = train_step.replicate(state)

  train_iter = _train_batches(config, data, per_device_batch, workdir, start_step)
  batches = data.name_corrupt_images(train_iter, config.dataset.train_split)
  p_train_step = train_step.pmapped_train_step_for(config, learning_rate_fn,
                                                   kernels.get(mode).cross_entropy_sums)
  eval_model = build_model(config.model, kernels=mode)
  split_evaluator = evaluator.Evaluator(eval_model, test, config.model.num_classes,
                                        data.class_names)
  show = preview.PredictionPreview(eval_model, data, config.dataset.eval_split, test,
                                   config.num_preview_images)

  def run_eval(state, step):
    """evaluate.py's protocol (config.test) on the validation split."""
    variables = _variables(state)
    metrics, table = evaluator.evaluate_split(split_evaluator, data, config.dataset.eval_split,
                                              variables)
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    if jax.process_index() == 0 and config.num_preview_images:
      writer.write_images(step, show(variables))
    logging.info('step %d: validation mIoU %.2f  mAcc %.2f  aAcc %.2f', step, metrics['mIoU'],
                 metrics['mAcc'], metrics['aAcc'])
    return metrics, table

  def save(state, step):
    """The data stream's position, then the state (Orbax commits it last, atomically)."""
    check_finite(unchecked, latest)
    try:
      train_iter.save(step)
      host_state = checkpoint.save_state(latest, step, state, digests=digests)
    except Exception as error:  # pylint: disable=broad-except
      if not disk_full(error):
        raise
      remove_partial_checkpoints(str(latest.directory))
      raise errors.InputError(
          f'No space left on the device of {workdir}: step {step} could not be saved. The '
          f'last intact checkpoint is step {latest.latest_step()} in {latest.directory}; free '
          'space and rerun the same command to resume from it.') from None
    problem = checkpoint.check_saved(latest, step, host_state, digests)
    if problem:
      logging.warning('Checkpoint %s/%d, read back, %s; it is set aside and the %d before it '
                      'are kept.', latest.directory, step, problem, len(latest.all_steps()) - 1)
      checkpoint.set_aside(latest, [step], bad_checkpoints)
    else:
      checkpoint.prune(latest, config.keep_checkpoints)
    train_iter.prune(latest.all_steps())
    checkpoint.prune_digests(digests, latest.all_steps())

  logging.info('Training %s for %d steps from step %d, global batch %d on %d %s devices '
               "(kernels '%s').", config.dataset.name, total_steps, start_step,
               config.batch_size, jax.device_count(), platform, mode)
  preemption = PreemptionWatch()
  history, unchecked, metrics, table = [], [], {}, None
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
        metrics, table = run_eval(state, step)
        checkpoint.save_state(best, step, state, metrics={'mIoU': metrics['mIoU']})
      if preemption.reached(step):
        save(state, step)
        logging.warning('Preempted (%s): saved step %d in %s; rerun the same command to '
                        'resume.', preemption.signal_name or 'SIGTERM', step, latest.directory)
        break
      if step % config.checkpoint_every_steps == 0 or is_last:
        save(state, step)
  finally:
    preemption.close()
  latest.wait_until_finished()
  best.wait_until_finished()
  writer.flush()
  if table and jax.process_index() == 0:
    logging.info('%s %s at step %d:\n%s', config.dataset.name, config.dataset.eval_split,
                 step, table)
  return metrics
