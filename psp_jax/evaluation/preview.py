"""The first validation images, their ground truth and the current prediction, for TensorBoard."""

import dataclasses

import numpy as np

from psp_jax.evaluation import inference, visualize


class PredictionPreview:
  """Side-by-side panels (image | ground truth | prediction) of the first `count` images.

  Whole-image prediction with the test protocol's resize; the network compiles once per
  image shape, the first time only, since the variables are an argument of the jitted
  function.
  """

  def __init__(self, model, data, split: str, test: inference.TestProtocol, count: int = 3):
    """data: the run's psp_jax.data.dataset.Dataset (examples, palette)."""
    self.examples = list(data.examples(split, count)) if count else []
    # One whole-image pass at the test size (CSAIL's: the largest short side): the
    # preview is a picture, not the metric.
    self.test = dataclasses.replace(test, mode='whole', scales=(1.0,), flip=False,
                                    short_sides=(max(test.short_sides),))
    self.predictor = inference.predictor_for_test(model, None, self.test)
    self.palette = data.palette

  def __call__(self, variables) -> dict[str, np.ndarray]:
    """{'eval/prediction_i': [1, H, 3W, 3] uint8} for the current variables."""
    self.predictor.variables = variables
    panels = {}
    for i, (image, label) in enumerate(self.examples):
      prediction = inference.predict(self.predictor, image, self.test).argmax(-1)
      panels[f'eval/prediction_{i}'] = visualize.side_by_side(
          image, label[..., 0], prediction, self.palette)[None]
    return panels
