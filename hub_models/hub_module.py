"""The root object of an exported model: a reusable (fine-tunable) TF Hub SavedModel.

TF Hub's reusable-SavedModel convention asks the root for `__call__(inputs, training=False)` traced
for both values of `training`, and for `variables`, `trainable_variables` and
`regularization_losses` saved as attributes; `hub.KerasLayer(handle, trainable=True)` reads those.
"""

from typing import Sequence

import tensorflow as tf

from hub_models.backbone import VideoSwinBackbone, pool

# The official preprocessing, on RGB in [0, 255].
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)


class FeatureExtractor(tf.Module):
  """Video `[B, 3, T, H, W]` float32 RGB in [0, 1] -> pooled feature `[B, 8C]` float32.

  The official mean/std normalisation happens inside, so callers only scale pixels to [0, 1].
  T, H, W are fixed by `input_size` at export time; the batch is dynamic.
  """

  # Saved as plain attributes (not tf.Module's computed properties) so that a loaded model has them.
  variables = None
  trainable_variables = None

  def __init__(self, backbone: VideoSwinBackbone, input_size: Sequence[int] = (32, 224, 224),
               name=None):
    super().__init__(name=name)
    self.backbone = backbone
    self.input_size = tuple(input_size)
    self.variables = list(backbone.variables)
    self.trainable_variables = list(backbone.trainable_variables)
    self.regularization_losses = []

  @property
  def input_spec(self) -> tf.TensorSpec:
    return tf.TensorSpec([None, 3, *self.input_size], tf.float32, name="video")

  @tf.function
  def __call__(self, video: tf.Tensor, training: bool = False) -> tf.Tensor:
    mean = tf.constant([m / 255.0 for m in RGB_MEAN], shape=[1, 3, 1, 1, 1])
    std = tf.constant([s / 255.0 for s in RGB_STD], shape=[1, 3, 1, 1, 1])
    x = tf.transpose((video - mean) / std, [0, 2, 3, 4, 1])
    return pool(self.backbone(x, training=training))

  def save(self, path: str) -> None:
    """Writes the SavedModel to `path`: `__call__` for both `training` values, and a
    `serving_default` signature returning {'features': [B, 8C]}."""
    self.__call__.get_concrete_function(self.input_spec, training=True)
    self.__call__.get_concrete_function(self.input_spec, training=False)

    @tf.function(input_signature=[self.input_spec])
    def serve(video):
      return {"features": self.__call__(video, training=False)}

    tf.saved_model.save(self, path, signatures={"serving_default": serve})
