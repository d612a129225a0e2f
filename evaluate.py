"""Evaluates a checkpoint: `python evaluate.py --config=configs/X.py --checkpoint=DIR`.

mIoU evaluation lands with issue #4; until then this entry point says so.
"""

import sys

if __name__ == '__main__':
  sys.exit('evaluate.py: evaluation is not implemented yet (issue #4).')
