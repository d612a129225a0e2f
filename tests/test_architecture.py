"""The package's import graph: each folder of psp_jax/ is a layer, imports point one way
between them, and chains from the scripts stay short.

docs/ARCHITECTURE.md draws the layers. A module may import its own folder and the folders
its layer lists below, nothing else: models and data know nothing of each other, and
evaluation takes a run's data as an object rather than importing the data layer.
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'psp_jax'
SCRIPTS = ('train.py', 'evaluate.py', 'predict.py')

# folder -> the folders its modules may import (besides their own).
MAY_IMPORT = {
    'base': set(),
    'models': {'base'},
    'data': {'base'},
    'config': {'base', 'data'},
    'evaluation': {'base', 'models'},
    'training': {'base', 'models', 'data', 'evaluation', 'config'},
    'tools': {'base', 'models', 'data', 'evaluation', 'config', 'training'},
    'convert': {'base', 'models', 'training', 'tools'},
    'export': {'base', 'models', 'data', 'evaluation', 'config', 'training', 'tools'},
}
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


def _folder(path: pathlib.Path) -> str:
  """'models' for psp_jax/models/kernels/conv.py; '__init__' for the package's face; 'script'."""
  if path.parent == ROOT:
    return 'script'
  return path.relative_to(PACKAGE).parts[0].removesuffix('.py')


def test_every_module_is_in_a_layer_folder():
  loose = [str(f.relative_to(ROOT)) for f in _graph()
           if _folder(f) not in (*MAY_IMPORT, '__init__', 'script')]
  assert not loose, f'modules outside the layer folders of {__file__}: {loose}'


def test_imports_point_down_the_layers():
  wrong = [f'{f.relative_to(ROOT)} imports {t.relative_to(ROOT)}'
           for f, targets in _graph().items() if _folder(f) in MAY_IMPORT
           for t in targets
           if _folder(t) != _folder(f) and _folder(t) not in MAY_IMPORT[_folder(f)]]
  assert not wrong, '\n'.join(wrong)


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
  assert PACKAGE / 'training' / 'train_loop.py' in graph[ROOT / 'train.py']
  kernels = PACKAGE / 'models' / 'kernels'
  assert kernels / 'conv.py' in graph[kernels / '__init__.py']
  assert PACKAGE / 'base' / 'spec.py' in graph[PACKAGE / 'training' / 'losses.py']


def test_inference_and_predict_load_no_tensorflow():
  code = ('import sys, psp_jax.evaluation.inference, psp_jax.training.checkpoint, '
          'psp_jax.data.catalog, psp_jax.models.pspnet, psp_jax.config.config_check, '
          'psp_jax.evaluation.visualize\n'
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
