"""The error psp_jax's own checks raise when what a user gave cannot work.

A config, a flag, a file or a dataset: the command-line tools print its message as one
line, `error: ...`, and exit with status 2 (psp_jax/tools/cli.py). Any other exception is a bug
and keeps its traceback. It is a ValueError, so code that catches those still does.
"""


class InputError(ValueError):
  """A config, flag, file or dataset psp_jax refuses; the message says what to change."""
