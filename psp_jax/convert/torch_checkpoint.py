"""PyTorch checkpoints (mmsegmentation, hszhao/semseg, CSAIL, ImageNet ResNets) -> Flax variables.

Conversion is strict: every source tensor must land in a Flax leaf of the same
shape and every target leaf must be filled, or one `ConversionError` lists all
missing, unexpected and mis-shaped keys. (semseg loads with `strict=False` and
would silently train from a half-initialised network; we refuse.)

Each format is a list of (regex over the PyTorch module path, Flax module path)
rules; the parameter name at the end of a key decides the Flax leaf:
`weight` of a conv -> `kernel` (OIHW -> HWIO), `weight` of a BN -> `scale`,
`bias` -> `bias`, `running_mean`/`running_var` -> `batch_stats` `mean`/`var`.
"""

import os
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from psp_jax.base import errors
from psp_jax.models.pspnet import PSPNet

Variables = dict[str, Any]

_RESNET_LAYERS = [
    (r'layer(\d)\.(\d+)\.(conv|bn)(\d)', r'backbone/layer\1_\2/\3\4'),
    (r'layer(\d)\.(\d+)\.downsample\.0', r'backbone/layer\1_\2/downsample_conv'),
    (r'layer(\d)\.(\d+)\.downsample\.1', r'backbone/layer\1_\2/downsample_bn'),
]
# mmcv's ResNet: `stem` Sequential (conv, bn, relu) x 3 when deep, else conv1/bn1.
_MMCV_STEM = [
    (r'stem\.0', 'backbone/stem_conv0'), (r'stem\.1', 'backbone/stem_bn0'),
    (r'stem\.3', 'backbone/stem_conv1'), (r'stem\.4', 'backbone/stem_bn1'),
    (r'stem\.6', 'backbone/stem_conv2'), (r'stem\.7', 'backbone/stem_bn2'),
    (r'conv1', 'backbone/stem_conv0'), (r'bn1', 'backbone/stem_bn0'),
]
# semseg's and CSAIL's ImageNet ResNets: the deep stem as conv1/bn1 .. conv3/bn3.
_NUMBERED_STEM = [(rf'(conv|bn){i + 1}', rf'backbone/stem_\g<1>{i}') for i in range(3)]


def _prefixed(prefix: str, rules):
  return [(re.escape(prefix) + pattern, target) for pattern, target in rules]


# Per format: (prefixes stripped from every key, keys dropped on purpose, module rules).
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...], list[tuple[str, str]]]] = {
    'mmseg': (
        ('module.',),
        (r'.*num_batches_tracked',),
        _prefixed('backbone.', _MMCV_STEM + _RESNET_LAYERS) + [
            (r'decode_head\.psp_modules\.(\d+)\.1\.(conv|bn)', r'decode_head/ppm/branch\1/\2'),
            (r'decode_head\.bottleneck\.(conv|bn)', r'decode_head/bottleneck/\1'),
            (r'decode_head\.conv_seg', 'decode_head/conv_seg'),
            (r'auxiliary_head\.convs\.0\.(conv|bn)', r'auxiliary_head/bottleneck/\1'),
            (r'auxiliary_head\.conv_seg', 'auxiliary_head/conv_seg'),
        ]),
    'semseg': (
        ('module.',),
        (r'.*num_batches_tracked',),
        [
            (r'layer0\.0', 'backbone/stem_conv0'), (r'layer0\.1', 'backbone/stem_bn0'),
            (r'layer0\.3', 'backbone/stem_conv1'), (r'layer0\.4', 'backbone/stem_bn1'),
            (r'layer0\.6', 'backbone/stem_conv2'), (r'layer0\.7', 'backbone/stem_bn2'),
        ] + _RESNET_LAYERS + [
            (r'ppm\.features\.(\d+)\.1', r'decode_head/ppm/branch\1/conv'),
            (r'ppm\.features\.(\d+)\.2', r'decode_head/ppm/branch\1/bn'),
            (r'cls\.0', 'decode_head/bottleneck/conv'), (r'cls\.1', 'decode_head/bottleneck/bn'),
            (r'cls\.4', 'decode_head/conv_seg'),
            (r'aux\.0', 'auxiliary_head/bottleneck/conv'),
            (r'aux\.1', 'auxiliary_head/bottleneck/bn'),
            (r'aux\.4', 'auxiliary_head/conv_seg'),
        ]),
    # CSAIL's mit_semseg: ResnetDilated encoder + PPMDeepsup decoder, two files (FILES).
    # Its SynchronizedBatchNorm2d keeps three more buffers, for its debiased running
    # averages while training on several GPUs; eval reads running_mean/var only.
    'csail': (
        (),
        (r'.*num_batches_tracked', r'.*\._tmp_running_mean', r'.*\._tmp_running_var',
         r'.*\._running_iter'),
        _prefixed('encoder.', _NUMBERED_STEM + _RESNET_LAYERS) + [
            (r'decoder\.ppm\.(\d+)\.1', r'decode_head/ppm/branch\1/conv'),
            (r'decoder\.ppm\.(\d+)\.2', r'decode_head/ppm/branch\1/bn'),
            (r'decoder\.conv_last\.0', 'decode_head/bottleneck/conv'),
            (r'decoder\.conv_last\.1', 'decode_head/bottleneck/bn'),
            (r'decoder\.conv_last\.4', 'decode_head/conv_seg'),
            (r'decoder\.cbr_deepsup\.0', 'auxiliary_head/bottleneck/conv'),
            (r'decoder\.cbr_deepsup\.1', 'auxiliary_head/bottleneck/bn'),
            (r'decoder\.conv_last_deepsup', 'auxiliary_head/conv_seg'),
        ]),
    # ImageNet backbones: their classifier (`fc`, mmcls `head.fc`) has no place in PSPNet.
    'mmcv-resnet': (
        ('module.', 'backbone.'),
        (r'.*num_batches_tracked', r'fc\..*', r'head\..*'),
        _MMCV_STEM + _RESNET_LAYERS),
    'torchvision': (
        ('module.',),
        (r'.*num_batches_tracked', r'fc\..*'),
        [(r'conv1', 'backbone/stem_conv0'), (r'bn1', 'backbone/stem_bn0')] + _RESNET_LAYERS),
    'semseg-resnet': (
        ('module.',),
        (r'.*num_batches_tracked', r'fc\..*'),
        _NUMBERED_STEM + _RESNET_LAYERS),
}
BACKBONE_FORMATS = ('mmcv-resnet', 'torchvision', 'semseg-resnet')
# Formats saved as one file per submodule: the files, in this order, are read into one
# state dict under these prefixes. CSAIL's train.py saves encoder_epoch_N.pth and
# decoder_epoch_N.pth; `encoder.` and `decoder.` are the names its SegmentationModule
# gives them, so a SegmentationModule's own state dict would read the same.
FILES = {'csail': ('encoder', 'decoder')}

_LEAVES = {
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
}


class ConversionError(errors.InputError):
  """A checkpoint does not match the model configuration it is converted for."""


def target_shapes(model: PSPNet, backbone_only: bool = False) -> dict[tuple[str, ...], tuple]:
  """{(collection, *module_path, leaf): shape} of the model's variables, without computing them."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  flat = traverse_util.flatten_dict(shapes)
  return {k: v.shape for k, v in flat.items() if not backbone_only or k[1] == 'backbone'}


def _target_key(key: str, value: np.ndarray, fmt: str) -> tuple[str, ...] | None:
  """Flax (collection, *path, leaf) for one PyTorch key, or None if no rule matches."""
  _, _, rules = FORMATS[fmt]
  module, _, name = key.rpartition('.')
  for pattern, target in rules:
    if re.fullmatch(pattern, module):
      path = tuple(re.sub(pattern, target, module).split('/'))
      if name == 'weight':
        return ('params', *path, 'kernel' if value.ndim == 4 else 'scale')
      if name in _LEAVES:
        collection, leaf = _LEAVES[name]
        return (collection, *path, leaf)
      return None
  return None


def convert_state_dict(state_dict: Mapping[str, np.ndarray], fmt: str, model: PSPNet) -> Variables:
  """Maps a PyTorch state dict onto `model`'s variables; raises ConversionError on any mismatch.

  Args:
    state_dict: PyTorch key -> array (conv weights OIHW).
    fmt: one of FORMATS.
    model: the PSPNet the variables are for; its configuration decides the shapes.
  Returns:
    {'params': ..., 'batch_stats': ...}; for ImageNet backbone formats only the
    'backbone' subtree of each, to initialise training.
  """
  if fmt not in FORMATS:
    raise errors.InputError(f'Unknown checkpoint format {fmt!r}; choose one of {sorted(FORMATS)}.')
  prefixes, dropped, _ = FORMATS[fmt]
  targets = target_shapes(model, backbone_only=fmt in BACKBONE_FORMATS)
  flat, unexpected, misshaped, misshaped_targets = {}, [], [], set()
  for key, value in state_dict.items():
    key_stripped = key
    for prefix in prefixes:
      key_stripped = key_stripped.removeprefix(prefix)
    if any(re.fullmatch(pattern, key_stripped) for pattern in dropped):
      continue
    value = np.asarray(value)
    target = _target_key(key_stripped, value, fmt)
    if target is None or target not in targets:
      unexpected.append(f'{key} {tuple(value.shape)}')
      continue
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != targets[target]:
      misshaped.append(f'{key}: checkpoint {tuple(value.shape)} vs model {targets[target]} '
                       f'at {"/".join(target)}')
      misshaped_targets.add(target)
      continue
    flat[target] = value.astype(model.param_dtype)  # BN statistics too, as the model's init
  missing = [f'{"/".join(k)} {shape}' for k, shape in targets.items()
             if k not in flat and k not in misshaped_targets]
  if missing or unexpected or misshaped:
    lines = [f'{fmt} checkpoint does not match the model configuration '
             '(check depth, stem, stem_widths, num_classes, pool_scales and the --format):']
    for title, items in (('missing in checkpoint', missing), ('unexpected in checkpoint',
                                                              unexpected),
                         ('shape mismatch', misshaped)):
      if items:
        lines.append(f'  {title} ({len(items)}):')
        lines.extend(f'    {item}' for item in items)
    raise ConversionError('\n'.join(lines))
  return traverse_util.unflatten_dict(flat)


def read_torch_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a .pth file: a plain state dict, or mmseg/semseg's {'state_dict': ..., 'meta'/...}.

  torch's safe loader (`weights_only=True`) is used unless `trust_pickle` is set,
  since a .pth file is a pickle that can run code.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.InputError(
        'Reading PyTorch checkpoints needs torch: pip install -e ".[convert]"') from e
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=not trust_pickle)
  except Exception as e:  # torch raises UnpicklingError or RuntimeError subclasses.
    if trust_pickle:
      raise
    raise errors.InputError(
        f'{path} could not be read with torch.load(weights_only=True): {e}\n'
        'If you trust this file, pass trust_pickle=True (CLI: --trust_pickle).') from e
  if isinstance(checkpoint, Mapping) and 'state_dict' in checkpoint:
    checkpoint = checkpoint['state_dict']
  if not isinstance(checkpoint, Mapping):
    raise errors.InputError(f'{path} holds a {type(checkpoint).__name__}, not a state dict.')
  return {k: v.detach().float().numpy() for k, v in checkpoint.items() if torch.is_tensor(v)}


def load_torch_checkpoint(path: str | os.PathLike | Sequence[str | os.PathLike],
                          format: str, model: PSPNet,  # pylint: disable=redefined-builtin
                          trust_pickle: bool = False) -> Variables:
  """Reads a PyTorch checkpoint and converts it strictly for `model` (see convert_state_dict).

  `path` is one .pth file, or for a format of FILES its files in that order
  ('csail': the encoder's, then the decoder's).
  """
  paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
  parts = FILES.get(format)
  expected = ' '.join(f'{part.upper()}.pth' for part in parts) if parts else 'one .pth file'
  if len(paths) != len(parts or ('',)):
    raise errors.InputError(f'--format={format} reads {expected}; got {len(paths)} file'
                            f'{"s" * (len(paths) != 1)}: {" ".join(map(str, paths))}.')
  if not parts:
    return convert_state_dict(read_torch_state_dict(paths[0], trust_pickle), format, model)
  state_dict = {f'{part}.{key}': value for part, part_path in zip(parts, paths)
                for key, value in read_torch_state_dict(part_path, trust_pickle).items()}
  return convert_state_dict(state_dict, format, model)
