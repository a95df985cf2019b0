"""An exported model inside tf_keras models under the mixed-precision policies users turn on.

hub.KerasLayer casts its input to the policy's compute dtype; the SavedModel accepts that dtype,
computes in float32 and returns the compute dtype.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from conftest import export_small_model, relative_error

SIZE = (8, 56, 56)
# Relative (Frobenius) error of the pooled features against float32: the input rounded to the
# compute dtype (8 / 11 significant bits) and the output rounded back dominate it. Measured: 3.1e-3
# and 3.9e-4 here, 1.8e-3 and 2.2e-4 for Swin-T at 32x224x224.
TOLERANCE = {"mixed_bfloat16": 1e-2, "mixed_float16": 1e-3}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  return export_small_model(str(tmp_path_factory.mktemp("mixed") / "model"), input_size=SIZE)


@pytest.fixture(params=sorted(TOLERANCE))
def policy(request):
  tf_keras.mixed_precision.set_global_policy(request.param)
  yield request.param
  tf_keras.mixed_precision.set_global_policy("float32")


def test_inference_under_policy_matches_float32(model_path, policy):
  video = np.random.RandomState(0).rand(2, 3, *SIZE).astype(np.float32)
  want = hub.KerasLayer(model_path, dtype="float32")(video).numpy()
  layer = hub.KerasLayer(model_path)
  assert layer.compute_dtype != "float32"
  for clip in (video, video[:, :, :6, :40, :48]):
    got = layer(clip)
    assert got.dtype == layer.compute_dtype
  error = relative_error(layer(video).numpy().astype(np.float32), want)
  assert error < TOLERANCE[policy]
  # Not the float32 result passed through: the input really went through the compute dtype.
  assert error > 0


def test_fine_tuning_step_under_policy_changes_every_backbone_variable(model_path, policy):
  layer = hub.KerasLayer(model_path, trainable=True)
  inputs = tf_keras.Input([3, *SIZE])
  # The mixed-precision guide's layout: the last layer in float32.
  logits = tf_keras.layers.Dense(4, dtype="float32")(layer(inputs, training=False))
  model = tf_keras.Model(inputs, logits)
  model.compile(tf_keras.optimizers.SGD(0.1),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  if policy == "mixed_float16":
    assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
  before = [w.numpy().copy() for w in layer.trainable_weights]
  assert before and all(w.dtype == tf.float32 for w in layer.trainable_weights)
  model.fit(np.random.RandomState(1).rand(2, 3, *SIZE).astype(np.float32), np.array([1, 3]),
            verbose=0)
  unchanged = [w.name for b, w in zip(before, layer.trainable_weights)
               if np.array_equal(b, w.numpy())]
  assert not unchanged
