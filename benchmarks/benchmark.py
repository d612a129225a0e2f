r"""psp_jax vs mmsegmentation's own PSPNet R50-D8 (150 classes), side by side in one run.

  python -m benchmarks.benchmark --eval_batches=1 --train_batch=2 --train_crop=256 \
      --out=benchmarks/cpu.json [--peak_tflops=989] [--dtype=bfloat16] [--skip_mmseg]
  python -m benchmarks.benchmark --max_batch --train_crop=512 --dtype=bfloat16 --skip_mmseg

Rows: eval forward (whole image, logits at input size) and a train step (forward +
backward + SGD update, main + 0.4 aux loss). Each row times psp_jax and mmseg alternately
(A/B, warm-ups excluded; every call's time is in the JSON) and reports medians and their
ratio, plus psp_jax's compile time, XLA's FLOP count, achieved TFLOP/s and MFU against
--peak_tflops, and peak memory (host RSS on CPU, device peak on GPU). Synthetic input
only: no TFDS needed. Run it from the repository root, as a module.
--max_batch instead finds the largest per-device train batch that runs at --train_crop,
without and with `remat` on the backbone stages (meant for a GPU: it stops at the first
out-of-memory error, which a CPU host reaches only after swapping).
"""

import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from psp_jax import build_model, config as base_config
from psp_jax.models import kernels
from psp_jax.training import train_step


def mmseg_reference():
  """tests/mmseg_reference.py (mmsegmentation's own PSPNet), loaded from its file.

  Not `from tests import mmseg_reference`: mmsegmentation's wheel installs a top-level
  `tests` package of its own, which wins over this repository's `tests/` (a namespace
  package, no __init__.py) wherever mmseg is installed. Registered as `mmseg_reference`,
  the name the tests import it by.
  """
  if 'mmseg_reference' in sys.modules:
    return sys.modules['mmseg_reference']
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
                      'mmseg_reference.py')
  spec = importlib.util.spec_from_file_location('mmseg_reference', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sys.modules['mmseg_reference'] = module
  return module


def _peak_memory_mb() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float((analysis or {}).get('flops', float('nan')))


def _jax_eval(model, variables, batch, size):
  images = jnp.asarray(np.random.RandomState(0).randn(batch, size, size, 3), jnp.float32)
  forward = jax.jit(lambda v, x: model.apply(v, x, method='segment'))
  start = time.perf_counter()
  compiled = forward.lower(variables, images).compile()
  compile_s = time.perf_counter() - start
  return (lambda: jax.block_until_ready(compiled(variables, images))), compile_s, _flops(compiled)


def train_compiled(model, batch, size, num_classes, cross_entropy_sums=None):
  """(compiled step, state, data, compile seconds): the one-device train step on random
  [batch, size, size] input; the seconds are the step's lowering and compiling only.
  `cross_entropy_sums`: the loss kernel, default the model's kernels' one."""
  tx = optax.sgd(0.01, momentum=0.9)
  state = train_step.create_train_state(model, tx, jax.random.PRNGKey(0), (1, size, size, 3))
  rng = np.random.RandomState(1)
  data = {'image': jnp.asarray(rng.randn(batch, size, size, 3), jnp.float32),
          'label': jnp.asarray(rng.randint(0, num_classes, (batch, size, size)), jnp.int32)}
  step = jax.jit(functools.partial(
      train_step.train_step, learning_rate_fn=lambda s: 0.01, axis_name=None,
      cross_entropy_sums=cross_entropy_sums or kernels.get(model.kernels).cross_entropy_sums),
      donate_argnums=(0,))
  start = time.perf_counter()
  compiled = step.lower(state, data).compile()
  return compiled, state, data, time.perf_counter() - start


def train_runner(compiled, state, data):
  """One call of a `train_compiled` step, carrying its donated state from call to call."""
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], data)
    jax.block_until_ready(metrics)
  return run


def _jax_train(model, batch, size, num_classes):
  compiled, state, data, compile_s = train_compiled(model, batch, size, num_classes)
  return train_runner(compiled, state, data), compile_s, _flops(compiled)


def _mmseg_runs(batch, size, train_batch, train_size, num_classes):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  model = mmseg_reference().build_pspnet(depth=50, num_classes=num_classes)
  images = torch.randn(batch, 3, size, size)

  def evaluate():
    with torch.no_grad():
      model.eval()
      logits = model.decode_head(model.extract_feat(images))
      torch.nn.functional.interpolate(logits, (size, size), mode='bilinear')

  train_images = torch.randn(train_batch, 3, train_size, train_size)
  labels = torch.randint(0, num_classes, (train_batch, train_size, train_size))
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

  def train():
    model.train()
    feats = model.extract_feat(train_images)
    loss = 0
    for head, weight in ((model.decode_head, 1.0), (model.auxiliary_head, 0.4)):
      logits = torch.nn.functional.interpolate(head(feats), (train_size, train_size),
                                               mode='bilinear')
      loss = loss + weight * torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  return evaluate, train


def _fits(model, batch, size, num_classes) -> bool:
  try:
    run, _, _ = _jax_train(model, batch, size, num_classes)
    run()
    return True
  except Exception as error:  # pylint: disable=broad-except
    if 'RESOURCE_EXHAUSTED' in str(error) or 'out of memory' in str(error).lower():
      return False
    raise


def _max_batch(model, size, num_classes, limit=1024) -> int:
  """Largest batch that trains: doubling until it fails, then bisecting."""
  low, high = 0, 1
  while high <= limit and _fits(model, high, size, num_classes):
    low, high = high, high * 2
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (middle, high) if _fits(model, middle, size, num_classes) else (low, middle)
  return low


def _ab(ours, theirs, iters, warmup):
  """Alternates the two callables: every call's seconds, warm-ups first."""
  times = {'ours': [], 'theirs': []}
  for _ in range(warmup + iters):
    for name, fn in (('ours', ours), ('theirs', theirs)):
      if fn is None:
        continue
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


FLAGS = flags.FLAGS
FLAG_NAMES = ('eval_batches', 'eval_size', 'train_batch', 'train_crop', 'iters', 'warmup',
              'dtype', 'peak_tflops', 'kernels', 'skip_mmseg', 'out', 'max_batch')


def define_flags() -> None:
  """The command's flags, defined only when it runs: importing it (gpu_check.py) defines none."""
  flags.DEFINE_string('eval_batches', '1', 'comma-separated batch sweep')
  flags.DEFINE_integer('eval_size', 512, 'eval image height and width')
  flags.DEFINE_integer('train_batch', 2, 'train step batch')
  flags.DEFINE_integer('train_crop', 256, 'train step crop height and width')
  flags.DEFINE_integer('iters', 9, 'timed calls of each, after warm-up')
  # XLA:CPU faults its per-call temporary buffer in afresh at every call. Alternated
  # with PyTorch, those faults cost up to 3x more system time in the first ~8 rounds
  # (2-core VM: train step 2.0-2.2 s, then 1.4-1.5 s; PyTorch steady at ~2.1 s
  # throughout); run alone, psp_jax is steady from its second call.
  flags.DEFINE_integer('warmup', 8, 'untimed calls of each, first')
  flags.DEFINE_string('dtype', 'float32', "compute dtype, e.g. 'bfloat16'")
  flags.DEFINE_float('peak_tflops', None,
                     'device peak for MFU (e.g. 989 for H100 SXM bf16 dense)')
  flags.DEFINE_string('kernels', 'auto', "config.model.kernels: 'auto', 'xla' or 'cpu'")
  flags.DEFINE_bool('skip_mmseg', False, 'time psp_jax only')
  flags.DEFINE_string('out', None, 'JSON file for the table')
  flags.DEFINE_bool('max_batch', False,
                    'find the largest train batch at --train_crop, without/with remat')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  num_classes = 150
  config = base_config.get_model_config()
  config.dtype = FLAGS.dtype
  config.kernels = kernels.resolve(FLAGS.kernels, jax.devices()[0].platform)
  model = build_model(config)
  if FLAGS.max_batch:
    print(f'{jax.devices()[0].device_kind}, dtype {FLAGS.dtype}, train crop {FLAGS.train_crop}')
    for remat in (False, True):
      print(f'remat={remat}: largest batch',
            _max_batch(build_model(config, remat=remat), FLAGS.train_crop, num_classes))
    return
  variables = jax.jit(model.init)(jax.random.PRNGKey(0),
                                  jnp.zeros((1, FLAGS.eval_size, FLAGS.eval_size, 3)))
  mmseg_eval = mmseg_train = None
  rows = []

  def row(name, images, ours, compile_s, flops, theirs):
    calls = _ab(ours, theirs, FLAGS.iters, FLAGS.warmup)
    timing = {k: statistics.median(v[FLAGS.warmup:]) if v[FLAGS.warmup:] else float('nan')
              for k, v in calls.items()}
    tflops = flops / timing['ours'] / 1e12
    rows.append({
        'row': name, 'psp_jax_s': timing['ours'], 'mmseg_s': timing['theirs'],
        'ratio': timing['ours'] / timing['theirs'], 'psp_jax_img_s': images / timing['ours'],
        'compile_s': compile_s, 'gflop': flops / 1e9, 'tflop_s': tflops,
        'mfu': tflops / FLAGS.peak_tflops if FLAGS.peak_tflops else float('nan'),
        'peak_mb': _peak_memory_mb(), 'calls_s': calls})

  for batch in [int(b) for b in FLAGS.eval_batches.split(',')]:
    if not FLAGS.skip_mmseg:
      mmseg_eval, mmseg_train = _mmseg_runs(batch, FLAGS.eval_size, FLAGS.train_batch,
                                            FLAGS.train_crop, num_classes)
    ours, compile_s, flops = _jax_eval(model, variables, batch, FLAGS.eval_size)
    row(f'eval {batch}x{FLAGS.eval_size}x{FLAGS.eval_size}', batch, ours, compile_s, flops,
        mmseg_eval)
  ours, compile_s, flops = _jax_train(model, FLAGS.train_batch, FLAGS.train_crop, num_classes)
  row(f'train {FLAGS.train_batch}x{FLAGS.train_crop}x{FLAGS.train_crop}', FLAGS.train_batch, ours,
      compile_s, flops, mmseg_train)

  header = ('row', 'psp_jax_s', 'mmseg_s', 'ratio', 'psp_jax_img_s', 'compile_s', 'gflop',
            'tflop_s', 'mfu', 'peak_mb')
  print(f'{jax.devices()[0].device_kind} x{jax.device_count()}, {platform.processor() or ""}'
        f' {os.cpu_count()} cores, jax {jax.__version__}, dtype {FLAGS.dtype}')
  print(' | '.join(header))
  for r in rows:
    print(' | '.join(r[h] if isinstance(r[h], str) else f'{r[h]:.4g}' for h in header))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump({'device': jax.devices()[0].device_kind, 'cores': os.cpu_count(),
                 'jax': jax.__version__,
                 'args': {name: FLAGS[name].value for name in FLAG_NAMES}, 'rows': rows,
                 'date': time.strftime('%Y-%m-%d')}, f, indent=2)


if __name__ == '__main__':
  define_flags()
  app.run(main)
