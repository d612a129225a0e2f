"""Which JAX platforms to start: no TPU client on a machine without a TPU chip.

With libtpu installed (the `[tpu]` and `[test]` extras), JAX starts a TPU client on any
machine, and on one without a TPU libtpu prints errors about TPU worker hostnames and
accelerator types before JAX falls back to the CPU. psp_jax leaves the TPU out when the
user has not chosen platforms (`JAX_PLATFORMS`), no TPU chip is on the PCI bus and no GPU
is visible; a TPU VM, a GPU machine and any explicit choice are left as they are.
"""

import glob
import importlib.util
import os
import pathlib

_GOOGLE_PCI_VENDOR = '0x1ae0'  # TPU chips, as jax's own hardware check reads them
_GPU_DEVICE_FILES = ('/dev/nvidia0', '/dev/nvidiactl', '/dev/kfd')


def has_tpu_chip() -> bool:
  """Whether a Google TPU chip is on this machine's PCI bus."""
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    try:
      if pathlib.Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
        return True
    except OSError:
      continue
  return False


def cpu_only_without_tpu() -> bool:
  """Sets JAX's platforms to 'cpu' where libtpu is installed but nothing but the CPU is here.

  Must run before JAX starts its backends (the first `jax.devices()` or computation);
  later it changes nothing. Returns whether it set them.
  """
  if (os.environ.get('JAX_PLATFORMS') or importlib.util.find_spec('libtpu') is None
      or has_tpu_chip() or any(os.path.exists(f) for f in _GPU_DEVICE_FILES)):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_platforms:
    return False
  jax.config.update('jax_platforms', 'cpu')
  return True
