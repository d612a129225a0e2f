r"""Compiles psp_jax's own train and eval steps for a TPU topology, without a TPU.

  pip install -e ".[tpu]"    # libtpu: the TPU compiler runs on any x86 host
  python -m benchmarks.compile_tpu --config=configs/ade20k.py --topology=v5e:2x2 \
      [--per_device_batch=4] [--programs=train,eval] [--max_batch] [--config.model.dtype=bfloat16]
  pip install -e ".[cuda12]"  # XLA's GPU compiler, for --topology=h100:1x1x4 (no GPU needed)

The train program is train.py's: `train_step.pmapped_train_step_for` of the config (sync
BN over the topology's devices, `lax.pmean` of gradients, the config's optimizer, state
donated), on `config.augment.crop_size` crops; the eval program is evaluate.py's
whole-image step (`evaluator.bucket_confusion_step`, one image per device, padded to the
config's size divisor). Each is lowered for `jax.experimental.topologies` abstract devices
and compiled by libtpu; one JSON line per program says what XLA reports per device: memory
(arguments, outputs, temporaries, aliased = donated), FLOPs and bytes accessed per step,
and a roofline lower bound on step time from the chip's published peak bf16 FLOP/s and HBM
bandwidth. These are compile-time figures, not measured speed. A device is a chip, except
on v4, whose abstract topology has one per TensorCore (2 per chip, each with half the
chip's HBM, FLOP/s and bandwidth); JAX on a v4 VM runs one per chip (megacore).
The same for GPUs with `--topology=h100:SLICESxHOSTSxGPUS` (gpu_target.py: XLA's GPU
compiler given a target description instead of a device): memory only, as XLA has no cost
analysis there, against the pool JAX allocates (`--gpu_memory_fraction` of the memory).
--max_batch finds the largest per-device train batch that fits its HBM, without and
with `remat`: compiles at the start batch and twice it, at a linear fit's prediction and
one above (or below), then bisects. "Fits" is libtpu's own verdict on a TPU (it refuses a
program over its HBM); libtpu's memory is neither linear nor monotonic in the batch, so
the bisection may take several compiles there.
"""

import json
import os
import time

# Compile only: JAX's own devices stay the CPU's, and libtpu does not ask a GCE metadata
# server (absent off Google Cloud) for TPU workers.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # beside another libtpu process
# Run as a module from the repository root, which is then importable: recipes
# import each other (configs/cityscapes.py imports configs/voc12_aug.py).

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from jax.experimental import topologies  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from benchmarks import gpu_target  # pylint: disable=wrong-import-position
from psp_jax.config import config_check  # pylint: disable=wrong-import-position
from psp_jax.evaluation import evaluator, inference  # pylint: disable=wrong-import-position
from psp_jax.models import kernels  # pylint: disable=wrong-import-position
from psp_jax.models.pspnet import build_model  # pylint: disable=wrong-import-position
from psp_jax.training import optimizer, train_step  # pylint: disable=wrong-import-position

# Per chip: HBM (GiB), peak dense bf16 TFLOP/s, HBM bandwidth (GB/s). TPUs: Google Cloud's
# TPU version pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e), 2026. H100: NVIDIA's
# H100 SXM data sheet (989 TFLOP/s dense bf16), memory and bandwidth as gpu_target.py's.
CHIPS = {
    'v4': dict(platform='tpu', hbm_gib=32, bf16_tflops=275, hbm_gbps=1200),
    'v5e': dict(platform='tpu', hbm_gib=16, bf16_tflops=197, hbm_gbps=819),
    'v5p': dict(platform='tpu', hbm_gib=95, bf16_tflops=459, hbm_gbps=2765),
    'v6e': dict(platform='tpu', hbm_gib=32, bf16_tflops=918, hbm_gbps=1640),
    'h100': dict(platform='cuda', hbm_gib=gpu_target.H100_SXM['device_memory_size'] / 2**30,
                 bf16_tflops=989, hbm_gbps=gpu_target.H100_SXM['memory_bandwidth'] / 1e9),
}

config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_string('topology', 'v5e:2x2', 'TPU topology or GPU target: ' + ', '.join(
    f'{k}:...' for k in CHIPS) + ' (e.g. v4:2x2x1, v5p:2x2x1, v6e:2x2; h100:1x1x4 is one '
    'host of 4 GPUs: slices x hosts x GPUs per host).')
flags.DEFINE_integer('per_device_batch', None, 'Train images per device; default the '
                     'recipe\'s batch_size over the topology\'s devices.')
flags.DEFINE_list('programs', ['train', 'eval'], 'Which programs to compile.')
flags.DEFINE_list('eval_size', None, 'Eval image height,width before padding; default the '
                  'crop size.')
flags.DEFINE_bool('max_batch', False, 'Also find the largest per-device train batch that fits, '
                  'without and with remat.')
flags.DEFINE_float('gpu_memory_fraction', 0.75, 'GPUs: the share of memory JAX allocates '
                   'for its pool (XLA_PYTHON_CLIENT_MEM_FRACTION, whose default is 0.75); '
                   '"fits" is against it.')
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def chip_of(topology_name: str) -> str:
  chip = topology_name.split(':')[0]
  if chip not in CHIPS:
    raise app.UsageError(f'--topology={topology_name}: give one of {sorted(CHIPS)}, e.g. v5e:2x2.')
  return chip


def topology_devices(topology_name: str):
  """Compile-only devices of a TPU topology ('v5e:2x2') or GPU target ('h100:1x1x4')."""
  chip = chip_of(topology_name)
  if CHIPS[chip]['platform'] == 'tpu':
    return topologies.get_topology_desc(topology_name=topology_name, platform='tpu').devices
  shape = topology_name.partition(':')[2] or '1x1x1'
  return topologies.get_topology_desc(
      platform='cuda', target_config=gpu_target.target_config(gpu_target.TARGETS[chip]),
      topology=shape).devices


def _stacked(tree, n: int):
  """Per-device shapes of `tree`, stacked over `n` devices as pmap takes them."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype), tree)


def _train_program(config, devices, per_device_batch: int):
  mode = kernels.resolve(config.model.kernels, devices[0].platform)
  model = build_model(config.model, bn_axis_name='batch' if config.sync_bn else None,
                      kernels=mode)
  height, width = config.augment.crop_size
  tx = optimizer.create_optimizer(config.optimizer, config.num_train_steps)
  learning_rate_fn = optimizer.create_learning_rate_fn(config.optimizer, config.num_train_steps)
  state = jax.eval_shape(lambda: train_step.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, height, width, 3)))
  batch = {'image': jax.ShapeDtypeStruct((per_device_batch, height, width, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((per_device_batch, height, width), jnp.int32)}
  step = train_step.pmapped_train_step_for(config, learning_rate_fn,
                                           kernels.get(mode).cross_entropy_sums,
                                           devices=devices)
  return step, (_stacked(state, len(devices)), _stacked(batch, len(devices)))


def _eval_program(config, devices, size):
  mode = kernels.resolve(config.model.kernels, devices[0].platform)
  model = build_model(config.model, kernels=mode)
  divisor = config.test.size_divisor or 1
  padded = [inference.round_up(n, divisor) for n in size]
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, *padded, 3))))
  args = (variables,
          jax.ShapeDtypeStruct((*padded, 3), jnp.float32),
          jax.ShapeDtypeStruct(tuple(size), jnp.int32),
          jax.ShapeDtypeStruct((size[0], padded[0]), jnp.float32),
          jax.ShapeDtypeStruct((size[1], padded[1]), jnp.float32))
  step = evaluator.bucket_confusion_step(model, config.model.num_classes, tuple(devices))
  return step, _stacked(args, len(devices))


def _compile(lowered, platform: str):
  """The compiled program, and the compiler options it needed beyond the defaults."""
  try:
    return lowered.compile(), {}
  except Exception as error:  # pylint: disable=broad-except
    # Without a device XLA's GPU compiler cannot autotune, and its default Triton tiling
    # fails on some fused dots (the loss's resize backward, jaxlib 0.10.2): cuBLAS then.
    if platform != 'cuda' or "Couldn't find output tile sizes" not in str(error):
      raise
  options = {'xla_gpu_enable_triton_gemm': False}
  return lowered.compile(compiler_options=options), options


def compile_report(program: str, config, topology_name: str, devices, **shape) -> dict:
  """Compiles one program; its figures per device as one dict (fits=False if XLA refused)."""
  chip = CHIPS[chip_of(topology_name)]
  if program == 'train':
    step, args = _train_program(config, devices, shape['per_device_batch'])
  else:
    step, args = _eval_program(config, devices, shape['eval_size'])
  # v4's abstract topology has one device per TensorCore (2 per chip); a v4 VM's JAX runs
  # one device per chip (megacore). Every figure below is per device, and so is the budget.
  cores = len({getattr(d, 'core_on_chip', 0) for d in devices})
  hbm_gib, peak, bandwidth = (chip[k] / cores for k in ('hbm_gib', 'bf16_tflops', 'hbm_gbps'))
  if chip['platform'] == 'cuda':
    hbm_gib *= FLAGS.gpu_memory_fraction
  chips = len({tuple(getattr(d, 'coords', (d.process_index, d.id))) for d in devices})
  report = dict(program=program, topology=topology_name, device_kind=devices[0].device_kind,
                devices=len(devices), chips=chips,
                devices_per_chip=cores, **shape, crop=list(config.augment.crop_size),
                dtype=config.model.dtype, remat=bool(config.model.remat),
                hbm_gib=round(hbm_gib, 2))
  start = time.perf_counter()
  try:
    compiled, options = _compile(step.lower(*args), chip['platform'])
  except Exception as error:  # XLA's out-of-memory at compile time: it does not fit
    if 'RESOURCE_EXHAUSTED' not in str(error) and 'memory' not in str(error).lower():
      raise
    report.update(compile_s=round(time.perf_counter() - start, 1), fits=False,
                  error=str(error).splitlines()[0][:300])
    return report
  report.update(compile_s=round(time.perf_counter() - start, 1), xla_options=options)
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  sizes = {k: int(getattr(memory, f'{k}_size_in_bytes'))
           for k in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  total = sizes['argument'] + sizes['output'] - sizes['alias'] + sizes['temp'] + sizes[
      'generated_code']
  report.update({f'{k}_bytes': v for k, v in sizes.items()})
  # Buffers XLA placed in host memory (offloaded), not counted against the device's.
  report['host_bytes'] = sum(int(getattr(memory, f'host_{k}_size_in_bytes', 0))
                             for k in ('argument', 'output', 'temp'))
  report.update(total_bytes=total, total_gib=round(total / 2**30, 3),
                fits=total <= hbm_gib * 2**30)
  if 'flops' in cost:  # not for a GPU without a device
    flops, accessed = float(cost['flops']), float(cost.get('bytes accessed', 0.0))
    images = shape.get('per_device_batch', 1)
    report.update(
        flops=flops, bytes_accessed=accessed, gflops_per_image=round(flops / images / 1e9, 1),
        roofline_ms=round(1e3 * max(flops / (peak * 1e12), accessed / (bandwidth * 1e9)), 2))
  return report


def max_batch(config, topology_name: str, devices, start: int, emit, known=()) -> int:
  """The largest per-device train batch that fits (0 if not even one does).

  `known`: train reports already compiled with this config (not compiled again).
  """
  reports = {r['per_device_batch']: r for r in known}

  def fit(b: int) -> bool:
    if b == 0:
      return True
    if b not in reports:
      reports[b] = compile_report('train', config, topology_name, devices, per_device_batch=b)
      emit(dict(reports[b], search='max_batch'))
    return reports[b]['fits']

  low = start
  if not fit(low):
    low, high = 0, low
  else:
    high = 2 * low
    if fit(high):  # memory is close to linear in the batch: extrapolate from two points
      per_image = (reports[high]['total_bytes'] - reports[low]['total_bytes']) / low
      fixed = reports[low]['total_bytes'] - per_image * low
      hbm = reports[low]['hbm_gib'] * 2**30
      guess = int((hbm - fixed) // max(per_image, 1.0))
      low, high = high, high + 1
      if guess > low:  # memory grows a little faster than the fit: try one below next
        if fit(guess):
          low, high = guess, guess + 1
        elif guess - 1 > low and fit(guess - 1):
          low, high = guess - 1, guess
        else:
          high = guess - 1 if guess - 1 > low else guess
      while fit(high):
        low, high = high, 2 * high
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (middle, high) if fit(middle) else (low, middle)
  return low


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  config_check.check_config(config)
  devices = topology_devices(FLAGS.topology)
  per_device = FLAGS.per_device_batch or max(1, config.batch_size // len(devices))
  size = [int(n) for n in FLAGS.eval_size] if FLAGS.eval_size else list(config.augment.crop_size)

  def emit(report):
    print(json.dumps(report), flush=True)

  reports = []
  for program in FLAGS.programs:
    if program not in ('train', 'eval'):
      raise app.UsageError(f'--programs: train and/or eval, not {program!r}.')
    shape = dict(per_device_batch=per_device) if program == 'train' else dict(eval_size=size)
    reports.append(compile_report(program, config, FLAGS.topology, devices, **shape))
    emit(reports[-1])
  if FLAGS.max_batch:
    for remat in (False, True):
      known = [r for r in reports if r['program'] == 'train' and r['remat'] == remat]
      config.model.remat = remat
      best = max_batch(config, FLAGS.topology, devices, per_device, emit, known)
      emit(dict(program='train', search='result', topology=FLAGS.topology, remat=remat,
                crop=list(config.augment.crop_size), dtype=config.model.dtype,
                max_per_device_batch=best))


if __name__ == '__main__':
  app.run(main)
