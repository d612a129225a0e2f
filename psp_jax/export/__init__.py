"""A trained PSPNet outside JAX: StableHLO (jax.export) and a TF SavedModel (jax2tf).

Both artifacts hold the variables as constants and take uint8 RGB images, [B, H, W, 3],
normalised inside (inference.normalize), for any batch size B at the H x W they
were exported for; they return the label map [B, H, W] int32 and the logits [B, H, W, K]
float32 at the input size (`PSPNet.segment`). H and W are fixed because the model's
resize and adaptive-pooling weights are tables computed from the static sizes (that is
what makes them PyTorch-exact); export once per input size.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from psp_jax import inference

FORMATS = ('stablehlo', 'savedmodel')


def serving_function(model, variables: Any) -> Callable[[jnp.ndarray], dict[str, jnp.ndarray]]:
  """uint8 [B, H, W, 3] -> {'label_map': [B, H, W] int32, 'logits': [B, H, W, K] float32}."""
  def serve(images):
    logits = model.apply(variables, inference.normalize(images), method='segment')
    logits = logits.astype(jnp.float32)
    return {'label_map': jnp.argmax(logits, axis=-1).astype(jnp.int32), 'logits': logits}
  return serve


def _input_spec(height: int, width: int) -> jax.ShapeDtypeStruct:
  batch, = jax.export.symbolic_shape('b')
  return jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)


def export_stablehlo(model, variables: Any, height: int, width: int) -> bytes:
  """The serialised jax.export.Exported of `serving_function`, any batch at height x width."""
  exported = jax.export.export(jax.jit(serving_function(model, variables)))(
      _input_spec(height, width))
  return bytes(exported.serialize())


def load_stablehlo(data: bytes) -> Callable[[np.ndarray], dict[str, jnp.ndarray]]:
  """The callable an `export_stablehlo` artifact holds (no psp_jax model needed)."""
  return jax.export.deserialize(bytearray(data)).call


def export_savedmodel(model, variables: Any, height: int, width: int, path: str) -> None:
  """A TF SavedModel at `path` whose 'serving_default' signature takes `images` uint8
  [None, height, width, 3] and returns 'label_map' and 'logits'."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  converted = jax2tf.convert(serving_function(model, variables),
                             polymorphic_shapes=[f'(b, {height}, {width}, 3)'])
  module = tf.Module()
  module.serve = tf.function(
      lambda images: converted(images), autograph=False,
      input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name='images')])
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
