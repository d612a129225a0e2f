"""A careless user and an adversarial tester, as scripts: what train.py, evaluate.py and
predict.py do with mistakes, damage and interruptions (issue 28's probes).

  python -m benchmarks.probes --scratch=DIR [--only=REGEX]

Each probe runs the real scripts in subprocesses on the tiny config (tests/tiny_config.py,
scenes prepared once under DIR) and is judged by what a user sees and keeps:
  one-line   the documented exit status and one `error:` line naming the value or file,
             or, where the run should go on, one warning line and the right result;
  works      the right result, nothing to say;
  traceback  a Python traceback (a bug, by the README's rule);
  silent     exit 0 with a wrong result and no word about it;
  lost       checkpoints or steps lost, or a later run resumed from a damaged state;
  unclear    anything else (several lines, a wrong status).
The table lists every probe with its outcome and the line it was judged by; the counts
close it. The disk probes mount small tmpfs folders, so they need root (else skipped).
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Callable, NamedTuple

import numpy as np
from absl import app, flags
from PIL import Image

flags.DEFINE_string('scratch', None, 'A folder for data, workdirs and images (emptied).')
flags.DEFINE_string('only', '', 'Run the probes whose name matches this regex.')
flags.DEFINE_string('out', '', 'Also write the table as JSON here.')
flags.mark_flag_as_required('scratch')
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))  # the damage the tests do
from checkpoint_damage import HOW, damage  # pylint: disable=wrong-import-position
from train_losses import losses  # pylint: disable=wrong-import-position
TINY = 'tests/tiny_config.py'
STEPS = 12  # the reference run: checkpoints at 4, 8, 12
TINY_MODEL = ['--config.model.stem_widths=(4,4,8)', '--config.model.base_width=4',
              '--config.model.ppm_channels=4', '--config.model.channels=8',
              '--config.model.aux_channels=4']


class Result(NamedTuple):
  status: int
  stderr: str
  stdout: str = ''


class Outcome(NamedTuple):
  kind: str    # one-line, works, traceback, silent, lost, unclear, skipped
  line: str    # what it was judged by


def run(script: str, *args: str, timeout: int = 900, prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None) -> Result:
  """`python script args` from the repository root (after `prefix`, e.g. a timer; with
  `env` added to the environment)."""
  result = subprocess.run([*prefix, sys.executable, script, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
  return Result(result.returncode, result.stderr, result.stdout)


def last_line(text: str) -> str:
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ''


def expect_error(result: Result, *needles: str, status: int = 2) -> Outcome:
  """The exit status and one `error:` line holding every needle."""
  if 'Traceback (most recent call last)' in result.stderr:
    return Outcome('traceback', _first_error(result.stderr))
  last = last_line(result.stderr)
  if result.status == 0:
    return Outcome('silent', f'exit 0: {last[:160]}')
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  if result.status == status and len(errors) == 1 and all(n in errors[0] for n in needles):
    return Outcome('one-line', errors[0])
  return Outcome('unclear', f'exit {result.status}: {last[:200]}')


def expect_warning(result: Result, pattern: str, status: int = 0) -> Outcome:
  """The run goes on (exit `status`) and one warning line matches `pattern`."""
  if 'Traceback (most recent call last)' in result.stderr:
    return Outcome('traceback', _first_error(result.stderr))
  if result.status != status:
    return Outcome('unclear', f'exit {result.status}: {last_line(result.stderr)[:200]}')
  found = [line for line in result.stderr.splitlines() if re.search(pattern, line)]
  if len(found) == 1:
    return Outcome('one-line', _absl_message(found[0]))
  return Outcome('silent' if not found else 'unclear',
                 f'{len(found)} lines match {pattern!r}')


def _first_error(text: str) -> str:
  lines = text.strip().splitlines()
  return f'Traceback, {len(lines)} lines: {lines[-1][:160] if lines else ""}'


def _absl_message(line: str) -> str:
  return re.sub(r'^[IWEF]\d{4} [\d:.]+\s+\d+ \S+\] ', '', line)


# ----------------------------------------------------------------------------- context


class Context:
  """The scratch folder, the prepared scenes and a reference run every probe may copy."""

  def __init__(self, scratch: str):
    self.scratch = scratch
    self.data_dir = os.path.join(scratch, 'tfds')
    self._reference = None
    self._count = 0

  def folder(self, name: str) -> str:
    self._count += 1
    path = os.path.join(self.scratch, f'{self._count:02d}_{name}')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def train_args(self, workdir: str, *overrides: str, steps: int = 2) -> list[str]:
    return [f'--config={TINY}', f'--workdir={workdir}', f'--config.dataset.data_dir={self.data_dir}',
            f'--config.num_train_steps={steps}', '--config.eval_every_steps=0',
            '--config.num_preview_images=0', *overrides]

  def train(self, workdir: str, *overrides: str, steps: int = 2, **kwargs) -> Result:
    return run('train.py', *self.train_args(workdir, *overrides, steps=steps), **kwargs)

  def reference(self) -> tuple[str, dict]:
    """(workdir, losses) of an uninterrupted run of STEPS steps, checkpoints every 4 and a
    best one (evaluated at the last step)."""
    if self._reference is None:
      workdir = os.path.join(self.scratch, 'reference')
      result = self.train(workdir, '--config.checkpoint_every_steps=4',
                          '--config.keep_checkpoints=10', f'--config.eval_every_steps={STEPS}',
                          steps=STEPS)
      if result.status != 0:
        raise RuntimeError(f'the reference run failed:\n{result.stderr[-3000:]}')
      self._reference = workdir, losses(workdir)
    return self._reference

  def copy_of_reference(self, name: str) -> str:
    workdir = self.folder(name)
    shutil.copytree(self.reference()[0], workdir)
    return workdir

  def resumes_bit_exactly(self, workdir: str, result: Result, step: int) -> Outcome | None:
    """None if `result` resumed at `step` and logged the reference's losses after it."""
    _, reference = self.reference()
    if not re.search(rf'at step {step}\b', result.stderr):
      return Outcome('lost', f'did not resume at step {step}: {last_line(result.stderr)[:160]}')
    got = losses(workdir)
    if sorted(got) != sorted(reference) or any(v[-1] != reference[s][0] for s, v in got.items()):
      return Outcome('lost', 'losses after the resume differ from the uninterrupted run')
    return None


def checkpoint_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


# ----------------------------------------------------------------- config values and flags


def _config_probe(override: str, *needles: str,
                  env: dict[str, str] | None = None) -> Callable[[Context], Outcome]:
  def probe(ctx):
    workdir = ctx.folder('config')
    outcome = expect_error(ctx.train(workdir, override, env=env), *needles)
    if outcome.kind == 'one-line' and os.path.exists(workdir):
      return Outcome('unclear', f'{outcome.line} (but {workdir} was created)')
    return outcome
  return probe


CONFIG_PROBES = {
    'log_every_steps=0': ('--config.log_every_steps=0', 'config.log_every_steps=0'),
    'checkpoint_every_steps=0': ('--config.checkpoint_every_steps=0',
                                 'config.checkpoint_every_steps=0'),
    'batch_size=0': ('--config.batch_size=0', 'config.batch_size=0'),
    'batch_size=-4': ('--config.batch_size=-4', 'config.batch_size=-4'),
    'batch_size=abc': ('--config.batch_size=abc', '--config.batch_size=abc'),
    'learning_rate=-0.05': ('--config.optimizer.learning_rate=-0.05',
                            'config.optimizer.learning_rate=-0.05'),
    'num_train_steps=0': ('--config.num_train_steps=0', 'config.num_train_steps=0'),
    'warmup_steps > num_train_steps': ('--config.optimizer.warmup_steps=50',
                                       'config.optimizer.warmup_steps=50'),
    'crop_size=64 (not a pair)': ('--config.augment.crop_size=64', 'config.augment.crop_size'),
    'eval_every_steps=-1': ('--config.eval_every_steps=-1', 'config.eval_every_steps=-1'),
    'aux_weight=-0.4': ('--config.aux_weight=-0.4', 'config.aux_weight=-0.4'),
    'momentum=1.5': ('--config.optimizer.momentum=1.5', 'config.optimizer.momentum=1.5'),
    'scale_range=(2.0,0.5)': ('--config.augment.scale_range=(2.0,0.5)',
                              'config.augment.scale_range'),
    'model.depth=42': ('--config.model.depth=42', 'config.model.depth=42'),
    'model.num_classes=5 (data has 10)': ('--config.model.num_classes=5',
                                          'config.model.num_classes=5'),
    'mistyped key': ('--config.optimizer.learnin_rate=0.1', 'config.optimizer.learning_rate'),
    'unknown dataset': ('--config.dataset.name=no_such_data', 'no_such_data'),
    'class_weight of 3 values': ('--config.class_weight=(1.0,1.0,1.0)', 'config.class_weight'),
}


probe_batch_not_divisible_by_devices = _config_probe(
    '--config.batch_size=3', 'config.batch_size=3', '4 devices',
    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})


def probe_missing_config_file(ctx):
  return expect_error(run('train.py', '--config=configs/no_such.py',
                          f'--workdir={ctx.folder("workdir")}'), 'configs/no_such.py')


def probe_missing_workdir_flag(ctx):
  return expect_error(run('train.py', f'--config={TINY}'), '--workdir')


def probe_workdir_is_a_file(ctx):
  path = ctx.folder('file')
  with open(path, 'w') as f:
    f.write('not a folder')
  return expect_error(ctx.train(path), f'--workdir={path}')


def probe_crop_larger_than_images(ctx):
  """The scenes are 48x256: a 96x512 crop is 75% padding."""
  return expect_warning(ctx.train(ctx.folder('crop'), '--config.augment.crop_size=(96,512)',
                                  steps=2), r'crop_size=\(96, 512\) is larger than the training')


# ----------------------------------------------------------------------------- checkpoints


def _damage_probe(how: str) -> Callable[[Context], Outcome]:
  def probe(ctx):
    workdir = ctx.copy_of_reference(how)
    damage(os.path.join(workdir, 'checkpoints', str(STEPS)), how)
    result = ctx.train(workdir, '--config.checkpoint_every_steps=4',
                       '--config.keep_checkpoints=1', steps=STEPS)
    outcome = expect_warning(result, rf'checkpoints/{STEPS} .*trying the one before it')
    if outcome.kind != 'one-line':
      return outcome
    lost = ctx.resumes_bit_exactly(workdir, result, STEPS - 4)
    if lost:
      return lost
    if not glob.glob(os.path.join(workdir, 'bad_checkpoints', f'{STEPS}-*')):
      return Outcome('lost', 'the damaged checkpoint was deleted, not set aside')
    return outcome
  return probe


def probe_resume_with_another_model(ctx):
  workdir = ctx.copy_of_reference('other_model')
  result = ctx.train(workdir, '--config.model.channels=16', steps=STEPS + 2)
  outcome = expect_error(result, 'does not fit')
  if checkpoint_steps(workdir) != [4, 8, 12]:
    return Outcome('lost', f'checkpoints now {checkpoint_steps(workdir)}')
  return outcome


def probe_keep_one_checkpoint_then_damage(ctx):
  """keep_checkpoints=1 and the newest save damaged: the run must not be left with nothing."""
  workdir = ctx.copy_of_reference('keep_one')
  result = ctx.train(workdir, '--config.checkpoint_every_steps=4',
                     '--config.keep_checkpoints=1', steps=STEPS + 4)
  if result.status != 0 or checkpoint_steps(workdir) != [STEPS + 4]:
    return Outcome('unclear', f'exit {result.status}, checkpoints {checkpoint_steps(workdir)}')
  damage(os.path.join(workdir, 'checkpoints', str(STEPS + 4)), 'flip_bytes')
  result = ctx.train(workdir, '--config.checkpoint_every_steps=4',
                     '--config.keep_checkpoints=1', steps=STEPS + 8)
  outcome = expect_error(result, 'is intact')
  if outcome.kind == 'silent':
    return Outcome('lost', 'exit 0 after its only checkpoint was damaged')
  if outcome.kind == 'one-line' and checkpoint_steps(workdir) != [STEPS + 4]:
    return Outcome('lost', f'checkpoints now {checkpoint_steps(workdir)}')
  return outcome


# ------------------------------------------------------------------------ one run per workdir


def _start_train(ctx, workdir, *overrides, steps=STEPS):
  log = tempfile.TemporaryFile('w+')
  process = subprocess.Popen([sys.executable, 'train.py',
                              *ctx.train_args(workdir, *overrides, steps=steps)],
                             cwd=ROOT, stderr=log, text=True)
  process.log = log
  return process


def _log(process) -> str:
  process.log.seek(0)
  return process.log.read()


def _wait_for(process, pattern, timeout=600) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if re.search(pattern, _log(process)):
      return True
    time.sleep(0.05)
  return False


def probe_two_runs_started_together(ctx):
  workdir = ctx.folder('together')
  first, second = (_start_train(ctx, workdir, '--config.checkpoint_every_steps=1', steps=6)
                   for _ in range(2))
  first.wait(900)
  second.wait(900)
  results = sorted([Result(p.returncode, _log(p)) for p in (first, second)])
  if results[0].status != 0:
    return expect_error(results[0], 'in use by another training run')
  outcome = expect_error(results[1], 'in use by another training run')
  if outcome.kind == 'one-line' and checkpoint_steps(workdir)[-1:] != [6]:
    return Outcome('lost', f'checkpoints {checkpoint_steps(workdir)}')
  return outcome


def probe_second_run_while_the_first_trains(ctx):
  """The first runs long enough to outlive the second's start, then is stopped (SIGTERM)."""
  workdir = ctx.folder('while')
  steps = 100000
  first = _start_train(ctx, workdir, '--config.checkpoint_every_steps=50', steps=steps)
  if not _wait_for(first, rf'step 2/{steps}'):
    first.kill()
    return Outcome('unclear', 'the first run did not reach step 2')
  second = ctx.train(workdir, '--config.checkpoint_every_steps=50', steps=steps)
  running = first.poll() is None
  first.send_signal(signal.SIGTERM)
  first.wait(900)
  if first.returncode != 0:
    return Outcome('lost', f'the first run failed: {last_line(_log(first))[:160]}')
  if not running:
    return Outcome('unclear', 'the first run ended before the second one did')
  return expect_error(second, 'in use by another training run', 'process')


def probe_stale_lock_of_a_dead_process(ctx):
  workdir = ctx.folder('stale')
  os.makedirs(workdir)
  dead = subprocess.Popen(['true'])
  dead.wait()
  with open(os.path.join(workdir, 'LOCK'), 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': dead.pid, 'started': 'earlier',
               'refreshed_unix': time.time()}, f)
  return expect_warning(ctx.train(workdir, steps=2), r'Taking over the stale lock')


# ----------------------------------------------------------------------------- interrupts


def _interrupt_probe(signum: int, twice: bool = False) -> Callable[[Context], Outcome]:
  def probe(ctx):
    workdir = ctx.folder(signal.Signals(signum).name.lower())
    process = _start_train(ctx, workdir, '--config.checkpoint_every_steps=5')
    if not _wait_for(process, rf'step 3/{STEPS}'):
      process.kill()
      return Outcome('unclear', 'did not reach step 3')
    process.send_signal(signum)
    if twice:  # after the first one's message, as a person would press it again
      if _wait_for(process, r'Ctrl-C: finishing', timeout=60):
        process.send_signal(signum)
    process.wait(600)
    result = Result(process.returncode, _log(process))
    if twice:  # stops at once: no traceback, one line; whatever was saved before stays
      if 'Traceback (most recent call last)' in result.stderr:
        return Outcome('traceback', _first_error(result.stderr))
      if result.status == 0:
        return Outcome('unclear', 'exit 0 after a second Ctrl-C')
      return Outcome('one-line' if result.status == 130 else 'unclear',
                     f'exit {result.status}: {last_line(result.stderr)[:160]}')
    outcome = expect_warning(result, r'Preempted \(\w+\): saved step \d+ .*rerun the same '
                                     r'command')
    if outcome.kind != 'one-line':
      return outcome
    saved = int(re.search(r'saved step (\d+)', outcome.line).group(1))
    resumed = ctx.train(workdir, '--config.checkpoint_every_steps=5', steps=STEPS)
    lost = ctx.resumes_bit_exactly(workdir, resumed, saved)
    return lost or outcome
  return probe


# ----------------------------------------------------------------------------- full disk


def _tmpfs(path: str, size: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                        capture_output=True).returncode == 0


def _umount(path: str) -> None:
  subprocess.run(['umount', path], capture_output=True)


def probe_disk_fills_during_training(ctx):
  """A workdir on a tmpfs that holds a few checkpoints: the save that does not fit."""
  mount = ctx.folder('small_disk')
  if not _tmpfs(mount, '1200k'):
    return Outcome('skipped', 'mount needs root')
  try:
    workdir = os.path.join(mount, 'workdir')
    result = ctx.train(workdir, '--config.checkpoint_every_steps=1',
                       '--config.keep_checkpoints=100', steps=40)
    outcome = expect_error(result, 'No space left', 'last intact checkpoint')
    steps = checkpoint_steps(workdir)
    partial = [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if not n.isdigit()]
    if outcome.kind == 'one-line' and (partial or not steps or
                                       f'step {steps[-1]}' not in outcome.line):
      return Outcome('lost', f'checkpoints {steps}, partial {partial}: {outcome.line}')
    return outcome
  finally:
    _umount(mount)


def probe_disk_full_at_start(ctx):
  mount = ctx.folder('full_disk')
  if not _tmpfs(mount, '64k'):
    return Outcome('skipped', 'mount needs root')
  try:
    with open(os.path.join(mount, 'filler'), 'wb') as f:
      try:
        f.write(b'\0' * (1 << 20))
      except OSError:
        pass
    return expect_error(ctx.train(os.path.join(mount, 'workdir')), 'No space left')
  finally:
    _umount(mount)


# ----------------------------------------------------------------------------- reading tools


def probe_evaluate_mistyped_workdir(ctx):
  missing = ctx.folder('mistyped')
  outcome = expect_error(run('evaluate.py', f'--config={TINY}', f'--workdir={missing}',
                             f'--config.dataset.data_dir={ctx.data_dir}'), missing)
  return Outcome('unclear', f'{missing} was created') if os.path.exists(missing) else outcome


def probe_predict_mistyped_workdir(ctx):
  missing = ctx.folder('mistyped')
  outcome = expect_error(run('predict.py', f'--config={TINY}', f'--workdir={missing}',
                             f'--out={ctx.folder("out")}', _an_image(ctx)), missing)
  return Outcome('unclear', f'{missing} was created') if os.path.exists(missing) else outcome


def probe_predict_checkpoint_given_a_workdir(ctx):
  workdir, _ = ctx.reference()
  return expect_error(run('predict.py', f'--config={TINY}', f'--checkpoint={workdir}',
                          f'--out={ctx.folder("out")}', _an_image(ctx)), '--workdir')


def probe_evaluate_empty_workdir(ctx):
  empty = ctx.folder('empty')
  os.makedirs(empty)
  outcome = expect_error(run('evaluate.py', f'--config={TINY}', f'--workdir={empty}',
                             f'--config.dataset.data_dir={ctx.data_dir}'), 'No checkpoint')
  return Outcome('unclear', f'{empty} was written') if os.listdir(empty) else outcome


def probe_evaluate_which_is_not_a_choice(ctx):
  workdir, _ = ctx.reference()
  return expect_error(run('evaluate.py', f'--config={TINY}', f'--workdir={workdir}',
                          '--which=newest'), '--which')


def probe_evaluate_another_model(ctx):
  workdir, _ = ctx.reference()
  return expect_error(run('evaluate.py', f'--config={TINY}', f'--workdir={workdir}',
                          '--config.model.channels=16',
                          f'--config.dataset.data_dir={ctx.data_dir}'), 'does not fit')


def probe_evaluate_reference(ctx):
  """The reference's best checkpoint, evaluated as trained: it works."""
  workdir, _ = ctx.reference()
  result = run('evaluate.py', f'--config={TINY}', f'--workdir={workdir}', '--which=latest',
               f'--config.dataset.data_dir={ctx.data_dir}')
  if result.status == 0 and 'mIoU' in result.stdout + result.stderr:
    return Outcome('works', 'mIoU reported')
  return expect_error(result)


def _an_image(ctx) -> str:
  path = os.path.join(ctx.scratch, 'images', 'street.png')
  if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (48, 120, 3)).astype(np.uint8)).save(path)
  return path


def _predict(ctx, *paths, flags_=()) -> tuple[Result, str]:
  workdir, _ = ctx.reference()
  out = ctx.folder('out')
  return run('predict.py', f'--config={TINY}', f'--workdir={workdir}', f'--out={out}',
             *flags_, *paths), out


def probe_predict_no_images(ctx):
  return expect_error(_predict(ctx)[0], 'give at least one image')


def probe_predict_missing_image(ctx):
  missing = os.path.join(ctx.scratch, 'no_such.png')
  return expect_error(_predict(ctx, missing)[0], missing)


def _predicts_the_rest(ctx, bad: str, *needles: str, flags_=()) -> Outcome:
  result, out = _predict(ctx, bad, _an_image(ctx), flags_=flags_)
  outcome = expect_error(result, *needles, status=1)
  if outcome.kind == 'unclear' and result.status == 1:  # the summary line comes last
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    if len(errors) == 1 and all(n in errors[0] for n in needles):
      outcome = Outcome('one-line', errors[0])
  if outcome.kind == 'one-line' and not os.path.exists(os.path.join(out, 'street.png_mask.png')):
    return Outcome('lost', 'the good image after it was not predicted')
  return outcome


def probe_predict_corrupt_image(ctx):
  path = os.path.join(ctx.scratch, 'images', 'broken.png')
  _an_image(ctx)
  with open(path, 'wb') as f:
    f.write(b'not an image')
  return _predicts_the_rest(ctx, path, 'broken.png', 'cannot read it as an image')


def probe_predict_20000x20000_png(ctx):
  """PIL's decompression-bomb size, from the header alone (no pixels needed)."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  path = os.path.join(ctx.scratch, 'images', 'huge.png')
  _an_image(ctx)
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 20000, 20000, 8, 2,
                                                                0, 0, 0)) + chunk(b'IEND', b''))
  return _predicts_the_rest(ctx, path, 'huge.png', '--max_pixels')


def probe_predict_8000x8000_photo(ctx):
  """64 MP: over the default --max_pixels (40 MP), so raised; predicted in windows past
  --max_network_pixels (one warning), in bounded memory (peak RSS in the line)."""
  path = os.path.join(ctx.scratch, 'images', 'big.png')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tile = np.random.RandomState(1).randint(0, 256, (500, 500, 3)).astype(np.uint8)
  Image.fromarray(np.tile(tile, (16, 16, 1))).save(path)
  workdir, _ = ctx.reference()
  out = ctx.folder('out')
  timer = ('/usr/bin/time', '-v') if os.path.exists('/usr/bin/time') else ()
  result = run('predict.py', f'--config={TINY}', f'--workdir={workdir}', f'--out={out}',
               '--max_pixels=64000000', path, prefix=timer)
  peak = re.search(r'Maximum resident set size \(kbytes\): (\d+)', result.stderr)
  outcome = expect_warning(result, r'more than --max_network_pixels')
  if outcome.kind == 'one-line':
    if not os.path.exists(os.path.join(out, 'big.png_mask.png')):
      return Outcome('lost', 'no mask written')
    if peak:
      outcome = Outcome('one-line', f'{outcome.line} (peak RSS {int(peak.group(1)) / 2**20:.2f} GiB)')
  return outcome


def probe_predict_out_is_a_file(ctx):
  path = ctx.folder('out_file')
  with open(path, 'w') as f:
    f.write('')
  workdir, _ = ctx.reference()
  return expect_error(run('predict.py', f'--config={TINY}', f'--workdir={workdir}',
                          f'--out={path}', _an_image(ctx)), path)


# --------------------------------------------------------------------------- folder datasets


NAMES = ['background', 'road', 'car']
PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142]]


def _folder(ctx, name, label_of=None, splits=(('train', 3), ('val', 1)), classes=True,
            label_size=None) -> str:
  """DIR/images/{split}/i.jpg + DIR/annotations/{split}/i.png, 3 classes."""
  root = ctx.folder(name)
  rng = np.random.RandomState(0)
  for split, count in splits:
    os.makedirs(os.path.join(root, 'images', split))
    os.makedirs(os.path.join(root, 'annotations', split))
    for i in range(count):
      Image.fromarray(rng.randint(0, 256, (40, 56, 3)).astype(np.uint8)).save(
          os.path.join(root, 'images', split, f'{i}.jpg'))
      label = np.zeros((40, 56), np.uint8)
      label[10:30, 5:40] = 1
      label[20:35, 30:50] = 2
      if label_of is not None:
        label = label_of(label)
      if label_size:
        label = label[:label_size[0], :label_size[1]]
      Image.fromarray(label).save(os.path.join(root, 'annotations', split, f'{i}.png'))
  if classes is True:
    classes = {'classes': NAMES, 'palette': PALETTE}
  if classes is not None:
    with open(os.path.join(root, 'classes.json'), 'w') as f:
      json.dump(classes, f)
  return root


def _train_folder(ctx, root, *overrides, num_classes=3):
  return run('train.py', '--config=configs/folder.py', f'--config.dataset.root={root}',
             f'--config.dataset.data_dir={ctx.folder("tfds")}',
             f'--config.model.num_classes={num_classes}', '--config.model.depth=18',
             *TINY_MODEL, '--config.augment.crop_size=(32,32)', '--config.batch_size=2',
             '--config.num_train_steps=1', '--config.eval_every_steps=0',
             '--config.num_preview_images=0', f'--workdir={ctx.folder("workdir")}', *overrides)


def probe_folder_binary_masks_0_255(ctx):
  root = _folder(ctx, 'binary', label_of=lambda l: np.where(l > 0, 255, 0).astype(np.uint8),
                 classes={'classes': ['background', 'object']})
  return expect_error(_train_folder(ctx, root, num_classes=2), '255', 'ignore')


def probe_folder_classes_is_a_string(ctx):
  root = _folder(ctx, 'bgr', classes={'classes': 'bgr'})
  return expect_error(_train_folder(ctx, root), 'classes.json', 'must be a list')


def probe_folder_empty_val(ctx):
  root = _folder(ctx, 'empty_val', splits=(('train', 3), ('val', 0)))
  return expect_error(_train_folder(ctx, root), 'images/val', 'empty')


def probe_folder_palette_length(ctx):
  root = _folder(ctx, 'palette', classes={'classes': NAMES, 'palette': PALETTE[:2]})
  return expect_error(_train_folder(ctx, root), 'classes.json', 'palette')


def probe_folder_label_value_out_of_range(ctx):
  root = _folder(ctx, 'value', label_of=lambda l: np.where(l == 2, 7, l).astype(np.uint8))
  return expect_error(_train_folder(ctx, root), 'label values [7]')


def probe_folder_label_of_another_size(ctx):
  root = _folder(ctx, 'size', label_size=(40, 50))
  return expect_error(_train_folder(ctx, root), 'annotations/train/0.png', '40x50')


def probe_folder_image_without_label(ctx):
  root = _folder(ctx, 'unlabelled')
  os.remove(os.path.join(root, 'annotations', 'train', '1.png'))
  return expect_error(_train_folder(ctx, root), 'images/train/1.jpg', 'has no label')


def probe_folder_root_missing(ctx):
  missing = os.path.join(ctx.scratch, 'no_such_folder')
  return expect_error(_train_folder(ctx, missing), missing)


def probe_folder_no_classes_json(ctx):
  root = _folder(ctx, 'no_classes', classes=None)
  return expect_error(_train_folder(ctx, root), 'classes.json')


def probe_folder_wrong_num_classes(ctx):
  root = _folder(ctx, 'num_classes')
  return expect_error(_train_folder(ctx, root, num_classes=4), 'num_classes=4', '3 classes')


def probe_folder_trains(ctx):
  """A good folder: it trains (one step) with nothing to say."""
  result = _train_folder(ctx, _folder(ctx, 'good'))
  if result.status == 0 and 'Traceback' not in result.stderr:
    return Outcome('works', 'exit 0')
  return expect_error(result)


# ------------------------------------------------------------------------------- the table


def probes() -> list[tuple[str, str, Callable[[Context], Outcome]]]:
  table = [('config', name, _config_probe(*args)) for name, args in CONFIG_PROBES.items()]
  table += [
      ('config', 'batch_size=3 (4 devices)', probe_batch_not_divisible_by_devices),
      ('config', 'missing --config file', probe_missing_config_file),
      ('config', 'no --workdir', probe_missing_workdir_flag),
      ('config', '--workdir is a file', probe_workdir_is_a_file),
      ('config', 'crop larger than the images', probe_crop_larger_than_images),
  ]
  table += [('checkpoint', f'latest checkpoint: {how}', _damage_probe(how))
            for how in HOW]
  table += [
      ('checkpoint', 'resume with another model', probe_resume_with_another_model),
      ('checkpoint', 'keep_checkpoints=1, newest damaged', probe_keep_one_checkpoint_then_damage),
      ('workdir', 'two runs started together', probe_two_runs_started_together),
      ('workdir', 'a second run while the first trains', probe_second_run_while_the_first_trains),
      ('workdir', 'stale lock of a dead process', probe_stale_lock_of_a_dead_process),
      ('interrupt', 'SIGTERM', _interrupt_probe(signal.SIGTERM)),
      ('interrupt', 'Ctrl-C (SIGINT)', _interrupt_probe(signal.SIGINT)),
      ('interrupt', 'Ctrl-C twice', _interrupt_probe(signal.SIGINT, twice=True)),
      ('disk', 'disk fills during training', probe_disk_fills_during_training),
      ('disk', 'disk full at start', probe_disk_full_at_start),
      ('reading', 'evaluate.py, mistyped --workdir', probe_evaluate_mistyped_workdir),
      ('reading', 'predict.py, mistyped --workdir', probe_predict_mistyped_workdir),
      ('reading', 'predict.py --checkpoint=<workdir>', probe_predict_checkpoint_given_a_workdir),
      ('reading', 'evaluate.py, workdir without checkpoints', probe_evaluate_empty_workdir),
      ('reading', 'evaluate.py --which=newest', probe_evaluate_which_is_not_a_choice),
      ('reading', 'evaluate.py, another model', probe_evaluate_another_model),
      ('reading', 'evaluate.py, as trained', probe_evaluate_reference),
      ('predict', 'no images given', probe_predict_no_images),
      ('predict', 'an image that does not exist', probe_predict_missing_image),
      ('predict', 'a corrupt image, then a good one', probe_predict_corrupt_image),
      ('predict', 'a 20000x20000 PNG, then a good one', probe_predict_20000x20000_png),
      ('predict', 'an 8000x8000 photo', probe_predict_8000x8000_photo),
      ('predict', '--out is a file', probe_predict_out_is_a_file),
      ('folder', 'binary masks 0/255, num_classes=2', probe_folder_binary_masks_0_255),
      ('folder', 'classes.json "classes": "bgr"', probe_folder_classes_is_a_string),
      ('folder', 'empty val folder', probe_folder_empty_val),
      ('folder', 'palette shorter than classes', probe_folder_palette_length),
      ('folder', 'label value 7 of 3 classes', probe_folder_label_value_out_of_range),
      ('folder', 'label of another size', probe_folder_label_of_another_size),
      ('folder', 'image without label', probe_folder_image_without_label),
      ('folder', 'root does not exist', probe_folder_root_missing),
      ('folder', 'no classes.json', probe_folder_no_classes_json),
      ('folder', 'num_classes=4 for 3 classes', probe_folder_wrong_num_classes),
      ('folder', 'a good folder', probe_folder_trains),
  ]
  return table


KINDS = ('one-line', 'works', 'traceback', 'silent', 'lost', 'unclear', 'skipped')


def main(argv):
  del argv
  shutil.rmtree(FLAGS.scratch, ignore_errors=True)
  os.makedirs(FLAGS.scratch)
  ctx = Context(FLAGS.scratch)
  rows = []
  for group, name, probe in probes():
    if FLAGS.only and not re.search(FLAGS.only, name):
      continue
    start = time.time()
    try:
      outcome = probe(ctx)
    except Exception as error:  # pylint: disable=broad-except
      outcome = Outcome('unclear', f'the probe itself failed: {type(error).__name__}: {error}')
    rows.append(dict(group=group, probe=name, outcome=outcome.kind, line=outcome.line,
                     seconds=round(time.time() - start, 1)))
    print(f'| {group} | {name} | {outcome.kind} | {outcome.line[:220]} |', flush=True)
  counts = {kind: sum(r['outcome'] == kind for r in rows) for kind in KINDS}
  print(f'\nprobes {len(rows)}: ' + ', '.join(f'{k} {v}' for k, v in counts.items()))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(dict(rows=rows, counts=counts), f, indent=1)


if __name__ == '__main__':
  app.run(main)
