"""The package's import graph: imports point one way, and chains from the scripts stay short.

Layers, lowest first (docs/ARCHITECTURE.md): data contract and config schema -> ops and
kernels -> models -> losses -> data -> step and checkpoints -> evaluation -> loop and
tools -> scripts. A module may import its own layer or lower ones, never a higher one.
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'psp_jax'
SCRIPTS = ('train.py', 'evaluate.py', 'predict.py')

LAYERS = [
    ('contract', ['spec', 'errors', 'config', 'classes', 'config_check', 'platforms']),
    ('ops', ['resample', 'kernels', 'images', 'visualize']),
    ('models', ['models']),
    ('losses', ['losses']),
    ('data', ['augment', 'input_pipeline', 'datasets', 'resumable_iterator']),
    ('step', ['optimizer', 'train_step', 'checkpoint', 'preemption', 'workdir_lock']),
    ('evaluation', ['metrics', 'inference', 'evaluator', 'preview', 'testing']),
    ('loop', ['train_loop', 'convert', 'export', 'cli', 'class_weights']),
    ('face', ['__init__']),  # the package's exports: what research code uses, from every layer
]
MAX_CHAIN = 6  # files, script included


def _module_file(parts: list[str]) -> pathlib.Path | None:
  path = ROOT.joinpath(*parts)
  if path.with_suffix('.py').is_file():
    return path.with_suffix('.py')
  if (path / '__init__.py').is_file():
    return path / '__init__.py'
  return None


def _imports(path: pathlib.Path) -> set[pathlib.Path]:
  """The package files `path` imports by name: `from psp_jax.x import y` is y's file when y
  is a module, else x's; the parent packages Python runs implicitly are not counted."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [alias.name.split('.') for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      base = node.module.split('.')
      targets = [base + [alias.name] if _module_file(base + [alias.name]) else base
                 for alias in node.names]
    else:
      continue
    found.update(f for t in targets if t[0] == 'psp_jax' for f in [_module_file(t)] if f)
  return found


def _graph() -> dict[pathlib.Path, set[pathlib.Path]]:
  files = sorted(PACKAGE.rglob('*.py')) + [ROOT / s for s in SCRIPTS]
  return {f: _imports(f) for f in files}


def _rank(path: pathlib.Path) -> int:
  if path.parent == ROOT:
    return len(LAYERS)  # a script
  top = path.relative_to(PACKAGE).parts[0].removesuffix('.py')
  for rank, (_, names) in enumerate(LAYERS):
    if top in names:
      return rank
  raise AssertionError(f'{path.relative_to(ROOT)} is in no layer of {__file__}: add it.')


def test_no_import_points_up_the_layers():
  upward = [f'{f.relative_to(ROOT)} ({LAYERS[_rank(f)][0] if _rank(f) < len(LAYERS) else "script"})'
            f' imports {t.relative_to(ROOT)} ({LAYERS[_rank(t)][0]})'
            for f, targets in _graph().items() for t in targets if _rank(t) > _rank(f)]
  assert not upward, '\n'.join(upward)


def test_chains_from_the_scripts_are_at_most_six_files():
  graph = _graph()
  longest: dict[pathlib.Path, list[pathlib.Path]] = {}

  def chain(f, seen=()):
    assert f not in seen, f'import cycle: {[str(s.relative_to(ROOT)) for s in (*seen, f)]}'
    if f not in longest:
      tails = [chain(t, (*seen, f)) for t in graph[f]]
      longest[f] = [f] + max(tails, key=len, default=[])
    return longest[f]

  for script in SCRIPTS:
    path = chain(ROOT / script)
    assert len(path) <= MAX_CHAIN, ' -> '.join(str(p.relative_to(ROOT)) for p in path)


def test_the_graph_sees_the_imports_it_checks():
  """A parser that found nothing would pass the tests above: it must see train.py's chain."""
  graph = _graph()
  assert PACKAGE / 'train_loop.py' in graph[ROOT / 'train.py']
  assert PACKAGE / 'kernels' / 'conv.py' in graph[PACKAGE / 'kernels' / '__init__.py']
  assert PACKAGE / 'spec.py' in graph[PACKAGE / 'losses.py']


def test_inference_and_predict_load_no_tensorflow():
  code = ('import sys, psp_jax.inference, psp_jax.checkpoint, psp_jax.classes, '
          'psp_jax.models.pspnet, psp_jax.config_check, psp_jax.visualize\n'
          "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
          'import runpy\n'
          "sys.argv = ['predict.py', '--helpshort']\n"
          'try:\n'
          "  runpy.run_path('predict.py', run_name='__main__')\n"
          'except SystemExit:\n'
          '  pass\n'
          "assert 'tensorflow' not in sys.modules, 'predict.py imported TensorFlow'\n"
          "print('ok')")
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-2000:]
