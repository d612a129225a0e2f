"""Damage to an Orbax checkpoint on disk, as a disk or a person might do it (issue 28)."""

import os

HOW = ('flip_bytes', 'truncate', 'delete_array_file', 'delete_metadata', 'empty_manifest')


def damage(step_dir: str, how: str) -> None:
  """Damages checkpoint folder `step_dir` (e.g. WORKDIR/checkpoints/12) in one of `HOW`'s ways:
  3 bytes XOR-ed, or half cut off, in its largest (array data) file, that file deleted,
  its `_METADATA` deleted, or its OCDBT manifests emptied."""
  if how not in HOW:
    raise ValueError(f'how={how!r}: one of {HOW}')
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names]
  if how == 'delete_metadata':
    (path,) = [p for p in files if os.path.basename(p) == '_METADATA']
    os.remove(path)
    return
  if how == 'empty_manifest':  # the item's and its process's: both are read
    for path in [p for p in files if os.path.basename(p) == 'manifest.ocdbt']:
      open(path, 'w').close()
    return
  largest = max(files, key=os.path.getsize)
  if how == 'flip_bytes':
    with open(largest, 'r+b') as f:
      f.seek(os.path.getsize(largest) // 2)
      data = f.read(3)
      f.seek(os.path.getsize(largest) // 2)
      f.write(bytes(b ^ 0xFF for b in data))
  elif how == 'truncate':
    os.truncate(largest, os.path.getsize(largest) // 2)
  else:
    os.remove(largest)
