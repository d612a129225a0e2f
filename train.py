"""Trains PSPNet: `python train.py --config=configs/ade20k.py --workdir=DIR`.

The training loop (TFDS input, pmapped step, Orbax resume) lands with issue #3;
until then this entry point says so instead of pretending to train.
"""

import sys

if __name__ == '__main__':
  sys.exit('train.py: training is not implemented yet (issue #3). The model, '
           'checkpoint converters and parity tests are in psp_jax/.')
