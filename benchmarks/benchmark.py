r"""psp_jax vs mmsegmentation's own PSPNet R50-D8 (150 classes), side by side in one run.

  python benchmarks/benchmark.py --eval_batches=1 --train_batch=2 --train_crop=256 \
      --out=benchmarks/cpu.json [--peak_tflops=989] [--dtype=bfloat16] [--skip_mmseg]
  python benchmarks/benchmark.py --max_batch --train_crop=512 --dtype=bfloat16 --skip_mmseg

Rows: eval forward (whole image, logits at input size) and a train step (forward +
backward + SGD update, main + 0.4 aux loss). Each row times psp_jax and mmseg alternately
(A/B, warm-ups excluded; every call's time is in the JSON) and reports medians and their
ratio, plus psp_jax's compile time, XLA's FLOP count, achieved TFLOP/s and MFU against
--peak_tflops, and peak memory (host RSS on CPU, device peak on GPU). Synthetic input
only: no TFDS needed.
--max_batch instead finds the largest per-device train batch that runs at --train_crop,
without and with `remat` on the backbone stages (meant for a GPU: it stops at the first
out-of-memory error, which a CPU host reaches only after swapping).
"""

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from psp_jax import config as base_config
from psp_jax import build_model, kernels, train_step


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
  from psp_jax import testing as mmseg_reference  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  model = mmseg_reference.build_pspnet(depth=50, num_classes=num_classes)
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--eval_batches', default='1', help='comma-separated batch sweep')
  parser.add_argument('--eval_size', type=int, default=512)
  parser.add_argument('--train_batch', type=int, default=2)
  parser.add_argument('--train_crop', type=int, default=256)
  parser.add_argument('--iters', type=int, default=9, help='timed calls of each, after warm-up')
  # XLA:CPU faults its per-call temporary buffer in afresh at every call. Alternated
  # with PyTorch, those faults cost up to 3x more system time in the first ~8 rounds
  # (2-core VM: train step 2.0-2.2 s, then 1.4-1.5 s; PyTorch steady at ~2.1 s
  # throughout); run alone, psp_jax is steady from its second call.
  parser.add_argument('--warmup', type=int, default=8, help='untimed calls of each, first')
  parser.add_argument('--dtype', default='float32', help="compute dtype, e.g. 'bfloat16'")
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='device peak for MFU (e.g. 989 for H100 SXM bf16 dense)')
  parser.add_argument('--kernels', default='auto', help="config.model.kernels: 'auto', 'xla' or 'cpu'")
  parser.add_argument('--skip_mmseg', action='store_true')
  parser.add_argument('--out', default=None, help='JSON file for the table')
  parser.add_argument('--max_batch', action='store_true',
                      help='find the largest train batch at --train_crop, without/with remat')
  args = parser.parse_args()

  num_classes = 150
  config = base_config.get_model_config()
  config.dtype = args.dtype
  config.kernels = kernels.resolve(args.kernels, jax.devices()[0].platform)
  model = build_model(config)
  if args.max_batch:
    print(f'{jax.devices()[0].device_kind}, dtype {args.dtype}, train crop {args.train_crop}')
    for remat in (False, True):
      print(f'remat={remat}: largest batch',
            _max_batch(build_model(config, remat=remat), args.train_crop, num_classes))
    return
  variables = jax.jit(model.init)(jax.random.PRNGKey(0),
                                  jnp.zeros((1, args.eval_size, args.eval_size, 3)))
  mmseg_eval = mmseg_train = None
  rows = []

  def row(name, images, ours, compile_s, flops, theirs):
    calls = _ab(ours, theirs, args.iters, args.warmup)
    timing = {k: statistics.median(v[args.warmup:]) if v[args.warmup:] else float('nan')
              for k, v in calls.items()}
    tflops = flops / timing['ours'] / 1e12
    rows.append({
        'row': name, 'psp_jax_s': timing['ours'], 'mmseg_s': timing['theirs'],
        'ratio': timing['ours'] / timing['theirs'], 'psp_jax_img_s': images / timing['ours'],
        'compile_s': compile_s, 'gflop': flops / 1e9, 'tflop_s': tflops,
        'mfu': tflops / args.peak_tflops if args.peak_tflops else float('nan'),
        'peak_mb': _peak_memory_mb(), 'calls_s': calls})

  for batch in [int(b) for b in args.eval_batches.split(',')]:
    if not args.skip_mmseg:
      mmseg_eval, mmseg_train = _mmseg_runs(batch, args.eval_size, args.train_batch,
                                            args.train_crop, num_classes)
    ours, compile_s, flops = _jax_eval(model, variables, batch, args.eval_size)
    row(f'eval {batch}x{args.eval_size}x{args.eval_size}', batch, ours, compile_s, flops,
        mmseg_eval)
  ours, compile_s, flops = _jax_train(model, args.train_batch, args.train_crop, num_classes)
  row(f'train {args.train_batch}x{args.train_crop}x{args.train_crop}', args.train_batch, ours,
      compile_s, flops, mmseg_train)

  header = ('row', 'psp_jax_s', 'mmseg_s', 'ratio', 'psp_jax_img_s', 'compile_s', 'gflop',
            'tflop_s', 'mfu', 'peak_mb')
  print(f'{jax.devices()[0].device_kind} x{jax.device_count()}, {platform.processor() or ""}'
        f' {os.cpu_count()} cores, jax {jax.__version__}, dtype {args.dtype}')
  print(' | '.join(header))
  for r in rows:
    print(' | '.join(r[h] if isinstance(r[h], str) else f'{r[h]:.4g}' for h in header))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'device': jax.devices()[0].device_kind, 'cores': os.cpu_count(),
                 'jax': jax.__version__, 'args': vars(args), 'rows': rows,
                 'date': time.strftime('%Y-%m-%d')}, f, indent=2)


if __name__ == '__main__':
  main()
