"""Root objects of exported models: reusable (fine-tunable) TF Hub SavedModels.

TF Hub's reusable-SavedModel convention asks the root for `__call__(inputs, training=False)` traced
for both values of `training`, and for `variables`, `trainable_variables` and
`regularization_losses` saved as attributes; `hub.KerasLayer(handle, trainable=True)` reads those.

Three roots share the input contract and differ in what they return:
  FeatureExtractor     pooled feature `[B, 8C]`            (signature output "features")
  FeatureMapExtractor  final-norm map `[B, 8C, T', H', W']` (signature output "feature_map")
  Classifier           logits `[B, K]`                     (signature output "logits")
"""

from typing import Sequence

import tensorflow as tf

from hub_models.backbone import VideoSwinBackbone, pool
from hub_models.head import ClassificationHead
from hub_models.variants import DEFAULT_INPUT_SIZE

# The official preprocessing, on RGB in [0, 255].
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)


class VideoModule(tf.Module):
  """Video `[B, 3, T, H, W]` float32 RGB in [0, 1] -> `_outputs(...)` float32.

  The official mean/std normalisation happens inside, so callers only scale pixels to [0, 1].
  T, H, W are fixed by `input_size` at export time; the batch is dynamic. Subclasses set
  `output_key` (the serving signature's output name) and implement `_outputs`.
  """

  output_key = None
  # Saved as plain attributes (not tf.Module's computed properties) so that a loaded model has them.
  variables = None
  trainable_variables = None

  def __init__(self, backbone: VideoSwinBackbone, input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
               extra_modules: Sequence[tf.Module] = (), name=None):
    super().__init__(name=name)
    self.backbone = backbone
    self.input_size = tuple(input_size)
    modules = [backbone, *extra_modules]
    self.variables = [v for m in modules for v in m.variables]
    self.trainable_variables = [v for m in modules for v in m.trainable_variables]
    self.regularization_losses = []

  @property
  def input_spec(self) -> tf.TensorSpec:
    return tf.TensorSpec([None, 3, *self.input_size], tf.float32, name="video")

  def _outputs(self, feature_map: tf.Tensor, training: bool) -> tf.Tensor:
    """Final-norm map `[B, T', H', W', 8C]` -> this module's output."""
    raise NotImplementedError

  @tf.function
  def __call__(self, video: tf.Tensor, training: bool = False) -> tf.Tensor:
    mean = tf.constant([m / 255.0 for m in RGB_MEAN], shape=[1, 3, 1, 1, 1])
    std = tf.constant([s / 255.0 for s in RGB_STD], shape=[1, 3, 1, 1, 1])
    x = tf.transpose((video - mean) / std, [0, 2, 3, 4, 1])
    return self._outputs(self.backbone(x, training=training), training)

  def save(self, path: str) -> None:
    """Writes the SavedModel to `path`: `__call__` for both `training` values, and a
    `serving_default` signature returning {output_key: output}."""
    self.__call__.get_concrete_function(self.input_spec, training=True)
    self.__call__.get_concrete_function(self.input_spec, training=False)

    @tf.function(input_signature=[self.input_spec])
    def serve(video):
      return {self.output_key: self.__call__(video, training=False)}

    tf.saved_model.save(self, path, signatures={"serving_default": serve})


class FeatureExtractor(VideoModule):
  """Returns the pooled feature `[B, 8C]`: the mean over (T', H', W') of the final-norm map."""

  output_key = "features"

  def _outputs(self, feature_map, training):
    return pool(feature_map)


class FeatureMapExtractor(VideoModule):
  """Returns the final-norm map channels first, `[B, 8C, T', H', W']` (T' = T/2, H' = H/32,
  W' = W/32, rounded up), the layout of the official backbone's output."""

  output_key = "feature_map"

  def _outputs(self, feature_map, training):
    return tf.transpose(feature_map, [0, 4, 1, 2, 3])


class Classifier(VideoModule):
  """Returns the logits `[B, K]` of the official classification head (dropout when training)."""

  output_key = "logits"

  def __init__(self, backbone: VideoSwinBackbone, head: ClassificationHead,
               input_size: Sequence[int] = DEFAULT_INPUT_SIZE, name=None):
    super().__init__(backbone, input_size, extra_modules=[head], name=name)
    self.head = head

  def _outputs(self, feature_map, training):
    return self.head(pool(feature_map), training=training)
