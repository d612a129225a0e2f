"""A trained PSPNet outside JAX: StableHLO (jax.export), TF SavedModel (jax2tf), ONNX.

Every artifact holds the variables as constants and takes uint8 RGB images [B, H, W, 3]
of any batch size B, height H and width W (all three symbolic), normalised inside
(inference.normalize); it returns the label map [B, H, W] int32 and the logits
[B, H, W, K] float32 at the input size (`PSPNet.segment`). The model is traced with the
'export' kernels (psp_jax/models/kernels/__init__.py): the plain operations, with the bilinear
and adaptive-pooling tables computed in the graph from the input's size instead of from
static NumPy tables, so one artifact serves every image size with the same bins and
interpolation weights as PyTorch; onnxruntime runs the ONNX model (jax2onnx, opset 23).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from psp_jax.base import errors
from psp_jax.evaluation import inference

FORMATS = ('stablehlo', 'savedmodel', 'onnx')


def serving_function(model, variables: Any) -> Callable[[jnp.ndarray], dict[str, jnp.ndarray]]:
  """uint8 [B, H, W, 3] -> {'label_map': [B, H, W] int32, 'logits': [B, H, W, K] float32},
  `model` traced with the 'export' kernels (the same variables, any input size)."""
  traced = model.clone(kernels='export')

  def serve(images):
    logits = traced.apply(variables, inference.normalize(images), method='segment')
    logits = logits.astype(jnp.float32)
    return {'label_map': jnp.argmax(logits, axis=-1).astype(jnp.int32), 'logits': logits}
  return serve


def _input_spec() -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(jax.export.symbolic_shape('b, h, w') + (3,), jnp.uint8)


def export_stablehlo(model, variables: Any) -> bytes:
  """The serialised jax.export.Exported of `serving_function`: images uint8 [b, h, w, 3]."""
  exported = jax.export.export(jax.jit(serving_function(model, variables)))(_input_spec())
  return bytes(exported.serialize())


def load_stablehlo(data: bytes) -> Callable[[np.ndarray], dict[str, jnp.ndarray]]:
  """The callable an `export_stablehlo` artifact holds (no psp_jax model needed); it
  compiles once per input shape."""
  return jax.export.deserialize(bytearray(data)).call


def export_savedmodel(model, variables: Any, path: str) -> None:
  """A TF SavedModel at `path` whose 'serving_default' signature takes `images` uint8
  [None, None, None, 3] and returns 'label_map' and 'logits'."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  converted = jax2tf.convert(serving_function(model, variables),
                             polymorphic_shapes=['(b, h, w, 3)'])
  module = tf.Module()
  module.serve = tf.function(
      lambda images: converted(images), autograph=False,
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name='images')])
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


def export_onnx(model, variables: Any, path: str) -> None:
  """An ONNX model (opset 23, one file) at `path`: input 'images' uint8 [b, h, w, 3],
  outputs 'label_map' and 'logits' (dimensions b, h, w named in the graph)."""
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.InputError(
        'Exporting ONNX needs jax2onnx and onnx: pip install -e ".[export]" '
        '&& pip install --no-deps jax2onnx==0.17.1') from e
  # The outputs are the dict's values in key order, as jax flattens it.
  proto = jax2onnx.to_onnx(serving_function(model, variables), [_input_spec()],
                           model_name='pspnet', input_names=['images'],
                           output_names=['label_map', 'logits'])
  onnx.save_model(proto, path)
