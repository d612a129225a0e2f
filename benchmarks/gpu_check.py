r"""The prepared GPU check: psp_jax vs mmseg (PyTorch AMP) on one GPU, in a few minutes.

  bash benchmarks/gpu_check.sh --out=DIR           # on an H100 / H200 (wheels: gpu_check.sh)
  python -m benchmarks.gpu_check --smoke --out=DIR  # anywhere, a tiny model, to know it runs

Writes DIR/gpu_check.json and DIR/gpu_check.md with:
- the device, its driver, jax / jaxlib / torch versions;
- a dilated 3x3 convolution at PSPNet-R50's stage-4 shape (2048 -> 512 is the head's;
  512 -> 512 at 1/8 resolution is the backbone's), dilation 1, 2 and 4, JAX vs PyTorch,
  bf16 (XLA's GPU backend was 15-23x slower than cuDNN on dilated convolutions until
  openxla/xla PR 32231, 2025: the dilation 2 and 4 rows say whether this jaxlib has it);
- the bf16 train step (R50-D8, 150 classes, 512x512, main + 0.4 aux loss, SGD) at per-device
  batch 8 and 16 with kernels='xla': images/s, MFU against the device's bf16 dense peak,
  and mmseg's PSPNet under torch.autocast(bfloat16) at the same shapes, alternated (A/B);
- whole-image eval (logits at input size) images/s over a batch sweep, A/B the same way;
- the train step at the smaller batch with the CPU kernels' blockwise loss (no
  full-resolution logits in memory), to see whether GPUs should have it too;
- jax_speedup = PyTorch seconds / JAX seconds (> 1: psp_jax faster);
- the largest per-device train batch without and with remat, from XLA's memory analysis
  (two compiles give memory per image; the prediction is compiled and run to confirm).
Synthetic input; no TFDS, no dataset.
"""

import functools
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import benchmark
from psp_jax import build_model, config as base_config
from psp_jax.models.kernels import cross_entropy

flags.DEFINE_bool('smoke', False, 'tiny model and shapes (CPU)')
flags.DEFINE_string('out', None, 'folder for gpu_check.json / .md')
flags.mark_flag_as_required('out')
FLAGS = flags.FLAGS

# Dense bf16 peak TFLOP/s by device kind (NVIDIA's H100 / H200 SXM data sheets; the
# "with sparsity" figures are twice these).
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}


def _peak_tflops(kind: str) -> float:
  return next((v for k, v in PEAK_TFLOPS.items() if k in kind), float('nan'))


def _driver() -> str:
  try:
    return subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                           '--format=csv,noheader'], capture_output=True, text=True,
                          timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'no nvidia-smi'


def _median_seconds(fn, iters: int, warmup: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _torch():
  """(torch, device, autocast context) or None if PyTorch is not importable."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  return torch, device, functools.partial(torch.autocast, device, dtype=torch.bfloat16)


def _sync(torch, device):
  if device == 'cuda':
    torch.cuda.synchronize()


def dilated_conv_rows(shape, iters, warmup):
  """3x3 convolution [B, H, W, C] -> C, dilation 1/2/4, JAX vs PyTorch, bf16."""
  batch, height, width, channels = shape
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*shape), jnp.bfloat16)
  w = jnp.asarray(rng.randn(3, 3, channels, channels) * 0.02, jnp.bfloat16)
  reference = _torch()
  rows = []
  for dilation in (1, 2, 4):
    conv = jax.jit(lambda x, w, d=dilation: jax.lax.conv_general_dilated(
        x, w, (1, 1), [(d, d), (d, d)], rhs_dilation=(d, d),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    ours = _median_seconds(lambda: conv(x, w).block_until_ready(), iters, warmup)
    theirs = float('nan')
    if reference:
      torch, device, _ = reference
      tx = torch.randn(batch, channels, height, width, device=device, dtype=torch.bfloat16
                       ).contiguous(memory_format=torch.channels_last)
      tconv = torch.nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                              bias=False).to(device, torch.bfloat16, memory_format=torch.channels_last)

      def run():
        with torch.no_grad():
          tconv(tx)
        _sync(torch, device)
      theirs = _median_seconds(run, iters, warmup)
    flops = 2 * batch * height * width * channels * channels * 9
    rows.append({'row': f'conv3x3 d{dilation} {batch}x{height}x{width}x{channels}',
                 'jax_ms': 1e3 * ours, 'torch_ms': 1e3 * theirs, 'jax_speedup': theirs / ours,
                 'jax_tflop_s': flops / ours / 1e12})
  return rows


def _mmseg(depth, num_classes):
  """mmseg's PSPNet on the torch device, or None (mmseg not importable)."""
  reference = _torch()
  if not reference:
    return None
  try:
    model = benchmark.mmseg_reference().build_pspnet(depth=depth, num_classes=num_classes)
  except ImportError as error:
    print(f'mmseg not importable ({error}): psp_jax only', file=sys.stderr)
    return None
  torch, device, autocast = reference
  return torch, device, autocast, model.to(device).to(memory_format=torch.channels_last)


def mmseg_train_fn(mmseg, batch, size, num_classes):
  torch, device, autocast, model = mmseg
  images = torch.randn(batch, 3, size, size, device=device).contiguous(
      memory_format=torch.channels_last)
  labels = torch.randint(0, num_classes, (batch, size, size), device=device)
  sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # bf16: no loss scaling

  def run():
    model.train()
    with autocast():
      feats = model.extract_feat(images)
      loss = 0
      for head, weight in ((model.decode_head, 1.0), (model.auxiliary_head, 0.4)):
        logits = torch.nn.functional.interpolate(head(feats), (size, size), mode='bilinear')
        loss = loss + weight * torch.nn.functional.cross_entropy(logits.float(), labels,
                                                                 ignore_index=255)
    sgd.zero_grad()
    loss.backward()
    sgd.step()
    _sync(torch, device)
  return run


def mmseg_eval_fn(mmseg, batch, size):
  torch, device, autocast, model = mmseg
  images = torch.randn(batch, 3, size, size, device=device).contiguous(
      memory_format=torch.channels_last)

  def run():
    model.eval()
    with torch.no_grad(), autocast():
      logits = model.decode_head(model.extract_feat(images))
      torch.nn.functional.interpolate(logits, (size, size), mode='bilinear')
    _sync(torch, device)
  return run


def _total_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def max_batch(model, size, num_classes, known: dict[int, int]) -> dict:
  """Largest batch whose step fits the device, predicted from memory per image and run."""
  limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
  if not limit or len(known) < 2:
    return {'max_batch': None, 'why': 'no device memory limit reported (CPU)'}
  (b1, m1), (b2, m2) = sorted(known.items())[:2]
  per_image = (m2 - m1) / (b2 - b1)
  guess = int((limit - (m1 - per_image * b1)) // per_image)
  while guess > 0:
    try:
      compiled, state, data, _ = benchmark.train_compiled(model, guess, size, num_classes)
      jax.block_until_ready(compiled(state, data))
      return {'max_batch': guess, 'bytes_per_image': per_image, 'bytes_limit': limit}
    except Exception as error:  # pylint: disable=broad-except
      if 'RESOURCE_EXHAUSTED' not in str(error) and 'out of memory' not in str(error).lower():
        raise
      guess = int(guess * 0.9)
  return {'max_batch': 0, 'bytes_limit': limit}


def write(report: dict, out: str) -> list[str]:
  """gpu_check.json and gpu_check.md in `out`, from what has run so far."""
  kind, peak = report['device_kind'], report['peak_bf16_tflops']
  smoke = report['smoke']
  report['wall_s'] = report.get('wall_s', float('nan'))
  with open(os.path.join(out, 'gpu_check.json'), 'w') as f:
    json.dump(report, f, indent=2)
  lines = [f"# GPU check, {report['date']}", '',
           f"{kind} x{report['devices']} ({report['driver']}); jax {report['jax']}, "
           f"torch {report['torch']}; bf16 peak {peak} TFLOP/s; {report['wall_s']:.0f} s"
           + (' (smoke: tiny model)' if smoke else '')
           + (f"; XLA_FLAGS={report['xla_flags']}" if report.get('xla_flags') else ''), '']
  columns = sorted({k for r in report['rows'] for k in r if k != 'row'})
  lines += ['| row | ' + ' | '.join(columns) + ' |', '|' + ' --- |' * (len(columns) + 1)]
  for r in report['rows']:
    cells = [f'{r[c]:.4g}' if isinstance(r.get(c), float) else str(r.get(c, '')) for c in columns]
    lines.append(f"| {r['row']} | " + ' | '.join(cells) + ' |')
  lines += ['', f"largest per-device train batch: without remat "
            f"{report.get('max_batch_remat_False')}, with remat {report.get('max_batch_remat_True')}"
            + (f" ({report['max_batch']})" if 'max_batch' in report else '')]
  with open(os.path.join(out, 'gpu_check.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  os.makedirs(FLAGS.out, exist_ok=True)
  kind = jax.devices()[0].device_kind
  num_classes = 150
  config = base_config.get_model_config()
  config.update(dtype='bfloat16', kernels='xla')
  size, train_batches, eval_batches, conv_shape, iters, warmup = (
      512, (8, 16), (1, 4, 8, 16), (8, 64, 64, 512), 10, 3)
  if FLAGS.smoke:  # R18 at 64x64: the same code paths in a minute on a CPU
    config.depth = 18
    size, train_batches, eval_batches, conv_shape, iters, warmup = (
        32, (2, 4), (2,), (1, 8, 8, 32), 1, 1)
  peak = _peak_tflops(kind)
  report = {'date': time.strftime('%Y-%m-%d %H:%M'), 'device_kind': kind,
            'devices': jax.device_count(), 'driver': _driver(), 'jax': jax.__version__,
            'jaxlib': jax.lib.__version__ if hasattr(jax.lib, '__version__') else '',
            'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'smoke': FLAGS.smoke, 'peak_bf16_tflops': peak, 'rows': []}
  reference = _torch()
  report['torch'] = f'{reference[0].__version__} on {reference[1]}' if reference else 'absent'
  started = time.perf_counter()

  def progress(what):  # and the files so far: a run cut short still leaves its rows
    report['wall_s'] = time.perf_counter() - started
    print(f'[{report["wall_s"]:6.0f} s] {what}', file=sys.stderr, flush=True)
    write(report, FLAGS.out)

  report['rows'] += dilated_conv_rows(conv_shape, iters, warmup)
  progress('dilated convolutions')
  mmseg = _mmseg(config.depth, num_classes)
  # Most wanted first (a run cut short keeps what it did): train, eval, then memory limits.
  memory = {False: {}, True: {}}
  model = build_model(config)
  for batch in train_batches:
    compiled, state, data, compile_s = benchmark.train_compiled(model, batch, size, num_classes)
    memory[False][batch] = _total_bytes(compiled)
    ours = benchmark.train_runner(compiled, state, data)
    theirs = mmseg_train_fn(mmseg, batch, size, num_classes) if mmseg else None
    calls = benchmark._ab(ours, theirs, iters, warmup)  # pylint: disable=protected-access
    t_ours = float(np.median(calls['ours'][warmup:]))
    t_theirs = float(np.median(calls['theirs'][warmup:])) if theirs else float('nan')
    flops = benchmark._flops(compiled)  # pylint: disable=protected-access
    report['rows'].append({
        'row': f'train bf16 {batch}x{size}x{size}', 'psp_jax_img_s': batch / t_ours,
        'mmseg_amp_img_s': batch / t_theirs, 'jax_speedup': t_theirs / t_ours,
        'compile_s': compile_s, 'tflop_s': flops / t_ours / 1e12,
        'mfu': flops / t_ours / 1e12 / peak, 'xla_bytes': memory[False][batch]})
    del compiled, state, data, ours
    progress(f'train batch {batch}')

  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  for batch in eval_batches:
    ours, compile_s, flops = benchmark._jax_eval(model, variables, batch, size)  # pylint: disable=protected-access
    theirs = mmseg_eval_fn(mmseg, batch, size) if mmseg else None
    calls = benchmark._ab(ours, theirs, iters, warmup)  # pylint: disable=protected-access
    t_ours = float(np.median(calls['ours'][warmup:]))
    t_theirs = float(np.median(calls['theirs'][warmup:])) if theirs else float('nan')
    report['rows'].append({'row': f'eval {batch}x{size}x{size}', 'psp_jax_img_s': batch / t_ours,
                           'mmseg_amp_img_s': batch / t_theirs, 'jax_speedup': t_theirs / t_ours,
                           'compile_s': compile_s, 'tflop_s': flops / t_ours / 1e12,
                           'mfu': flops / t_ours / 1e12 / peak})
    del ours
    progress(f'eval batch {batch}')
  del variables, mmseg

  # The CPU kernels' blockwise loss never holds the full-resolution logits, which are half of
  # the train step's memory on an H100 (RESULTS.md, compiled without a device): is it fast
  # enough on a GPU to be the default there?
  batch = train_batches[0]
  compiled, state, data, compile_s = benchmark.train_compiled(
      model, batch, size, num_classes, cross_entropy.upsampled_cross_entropy_sums)
  seconds = _median_seconds(benchmark.train_runner(compiled, state, data), iters, warmup)
  report['rows'].append({'row': f'train bf16 {batch}x{size}x{size}, blockwise loss',
                         'psp_jax_img_s': batch / seconds, 'compile_s': compile_s,
                         'xla_bytes': _total_bytes(compiled)})
  del compiled, state, data
  progress('blockwise loss')

  limited = bool((jax.devices()[0].memory_stats() or {}).get('bytes_limit'))
  for remat in (False, True) if limited else ():
    model = build_model(config, remat=remat)
    for batch in train_batches:
      if batch not in memory[remat]:
        compiled = benchmark.train_compiled(model, batch, size, num_classes)[0]
        memory[remat][batch] = _total_bytes(compiled)
    report[f'max_batch_remat_{remat}'] = max_batch(model, size, num_classes, memory[remat])
    progress(f'largest batch, remat {remat}')
  if not limited:
    report['max_batch'] = 'not searched: the device reports no memory limit (CPU)'
  report['wall_s'] = time.perf_counter() - started

  lines = write(report, FLAGS.out)
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
