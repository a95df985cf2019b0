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

from .backbone import VideoSwinBackbone, pool
from .head import ClassificationHead
from .variants import DEFAULT_INPUT_SIZE

# The official preprocessing, on RGB in [0, 255].
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)


# Input dtypes the root's `__call__` is traced for: float32, and the compute dtypes of the Keras
# mixed-precision policies (hub.KerasLayer casts its input to the policy's compute dtype).
INPUT_DTYPES = (tf.float32, tf.bfloat16, tf.float16)


class VideoModule(tf.Module):
  """Video `[B, 3, T, H, W]` RGB in [0, 1] -> `_outputs(...)`.

  The official mean/std normalisation happens inside, so callers only scale pixels to [0, 1].
  `input_size` (T, H, W) is the fixed clip shape of the `serving_default` signature; `__call__`
  and the `serving_dynamic` signature also take any T, H, W and batch. Subclasses set `output_key`
  (the serving signatures' output name) and implement `_outputs`.
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
    # The float32 graphs, one per clip shape and `training`, that the traces of `__call__` for
    # each input dtype call instead of each holding a copy. Reached through a plain function, not
    # a tf.function attribute: a save retraces every tf.function attribute on its own, and these
    # are saved once already, inside the traces that call them.
    float32_graph = tf.function(self._float32_outputs)
    self._call_float32 = lambda video, training: float32_graph(video, training)

  @property
  def input_spec(self) -> tf.TensorSpec:
    """The fixed `serving_default` input: float32 `[None, 3, T, H, W]`."""
    return tf.TensorSpec([None, 3, *self.input_size], tf.float32, name="video")

  @property
  def dynamic_input_spec(self) -> tf.TensorSpec:
    """The `serving_dynamic` input: float32 `[None, 3, None, None, None]`."""
    return tf.TensorSpec([None, 3, None, None, None], tf.float32, name="video")

  def _outputs(self, feature_map: tf.Tensor, training: bool) -> tf.Tensor:
    """Final-norm map `[B, T', H', W', 8C]` -> this module's output."""
    raise NotImplementedError

  @tf.function
  def __call__(self, video: tf.Tensor, training: bool = False) -> tf.Tensor:
    """`video` float32, bfloat16 or float16 `[B, 3, T, H, W]` -> the output in the same dtype.

    Whatever the input dtype, the model computes in its backbone's `compute_dtype` from a float32
    input (a reduced precision input is cast up) and returns float32, which is cast to the input's
    dtype: the dtype Keras layers return under a mixed-precision policy.
    """
    video_float32 = tf.cast(video, tf.float32)
    if video.shape[2:].is_fully_defined():
      output = self._call_float32(video_float32, training)
    else:
      # A loaded model picks the first saved trace whose spec is compatible with the input, and an
      # unknown size is compatible with any fixed one, so the saved traces all take run-time shapes
      # and send clips of the export's shape to the graph specialised to it.
      fixed = [None, 3, *self.input_size]
      output = tf.cond(
          tf.reduce_all(tf.equal(tf.shape(video)[2:], self.input_size)),
          lambda: self._call_float32(tf.ensure_shape(video_float32, fixed), training),
          lambda: self._call_float32(video_float32, training))
    return tf.cast(output, video.dtype)

  def _float32_outputs(self, video: tf.Tensor, training: bool) -> tf.Tensor:
    """`video` float32 `[B, 3, T, H, W]` -> the output, float32, computed in the backbone's
    `compute_dtype`."""
    mean = tf.constant([m / 255.0 for m in RGB_MEAN], shape=[1, 3, 1, 1, 1])
    std = tf.constant([s / 255.0 for s in RGB_STD], shape=[1, 3, 1, 1, 1])
    x = tf.transpose((video - mean) / std, [0, 2, 3, 4, 1])
    return self._outputs(self.backbone(x, training=training), training)

  def _trackable_children(self, save_type="checkpoint", **kwargs):
    if save_type == "savedmodel":
      # Traced here, inside the save: a save retraces under its own options whatever was traced
      # before it, so traces made earlier would be built twice.
      for dtype in INPUT_DTYPES:
        for training in (False, True):
          self.__call__.get_concrete_function(
              tf.TensorSpec(self.dynamic_input_spec.shape, dtype, name="video"), training=training)
    return super()._trackable_children(save_type, **kwargs)

  def save(self, path: str) -> None:
    """Writes the SavedModel to `path`.

    The root's `__call__` is traced for `[None, 3, None, None, None]`, each dtype of
    `INPUT_DTYPES` and both `training` values; the signatures `serving_default` (the fixed
    `input_spec`) and `serving_dynamic` (`dynamic_input_spec`) map float32 `video` to
    {output_key: output} float32.
    """
    @tf.function(input_signature=[self.input_spec])
    def serving_default(video):
      # A loaded signature does not check shapes: without this, another clip shape fails deep in
      # the graph with a reshape error.
      fixed = [3, *self.input_size]
      accepted = tf.debugging.Assert(
          tf.reduce_all(tf.equal(tf.shape(video)[1:], fixed)),
          [f"serving_default takes video [batch, {', '.join(map(str, fixed))}]; use "
           "serving_dynamic for other clip shapes. Got shape", tf.shape(video)], summarize=5)
      with tf.control_dependencies([accepted]):
        return {self.output_key: self._call_float32(tf.identity(video), training=False)}

    @tf.function(input_signature=[self.dynamic_input_spec])
    def serving_dynamic(video):
      return {self.output_key: self.__call__(video, training=False)}

    tf.saved_model.save(self, path, signatures={"serving_default": serving_default,
                                                "serving_dynamic": serving_dynamic})


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
