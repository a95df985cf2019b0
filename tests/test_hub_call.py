"""One exported model called as users call it: any clip shape through hub.KerasLayer, the two
serving signatures, and the trace a loaded model picks for its fixed shape.

The model is exported for a fixed 32x224x224 input from a random-weight torchvision checkpoint in
the official layout; every output is compared with torchvision's SwinTransformer3d.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

import torch_reference
from conftest import normalise, relative_error, small_variant
from video_swin_hub.hub_models import checkpoint, conversion
from video_swin_hub.hub_models.backbone import VideoSwinBackbone
from video_swin_hub.hub_models.hub_module import FeatureExtractor

TOLERANCE = 1e-5
FIXED = (32, 224, 224)
# (batch, T, H, W): the export's own shape, fewer frames, a smaller clip, odd sizes (end padding,
# odd merges), a clip smaller than the window on every axis, and a batch of 3.
CALLS = [(1, *FIXED), (1, 16, 224, 224), (1, 8, 112, 112), (1, 18, 100, 132), (1, 4, 64, 64),
         (3, 8, 112, 112)]
# (feature map shape, training) of each float32 graph the fixture's save built.
SAVE_TRACES = []


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(torchvision reference, SavedModel path) of one small-architecture feature extractor."""
  variant = small_variant()
  reference = torch_reference.reference_model(variant.architecture, variant.num_classes, seed=7)
  folder = tmp_path_factory.mktemp("hub_call")
  torch_reference.save_official(reference, folder / "small.pth")
  state = conversion.canonical_state_dict(checkpoint.load(folder / "small.pth"))
  backbone = VideoSwinBackbone(variant.architecture)
  conversion.load_weights(state, variant, backbone, None)
  path = str(folder / "model")
  module = FeatureExtractor(backbone, input_size=FIXED)
  outputs = module._outputs
  def counted_outputs(feature_map, training):  # runs once per trace
    SAVE_TRACES.append((tuple(feature_map.shape), training))
    return outputs(feature_map, training)
  module._outputs = counted_outputs
  module.save(path)
  return reference, path


def reference_features(reference, video):
  return torch_reference.reference_outputs(reference, normalise(video))[0]


def test_keras_layer_matches_reference_at_every_shape(exported):
  reference, path = exported
  layer = hub.KerasLayer(path)
  rng = np.random.RandomState(8)
  for batch, *size in CALLS:
    video = rng.rand(batch, 3, *size).astype(np.float32)
    got = layer(video).numpy()
    want = reference_features(reference, video)
    assert got.shape == want.shape
    assert relative_error(got, want) < TOLERANCE, (batch, size)


def test_keras_model_with_unknown_clip_shape(exported):
  reference, path = exported
  inputs = tf_keras.Input([3, None, None, None])
  model = tf_keras.Model(inputs, hub.KerasLayer(path)(inputs))
  assert model.output_shape == (None, 24 * 8)
  video = np.random.RandomState(9).rand(2, 3, 6, 72, 40).astype(np.float32)
  assert relative_error(model(video).numpy(), reference_features(reference, video)) < TOLERANCE


def branch_input_shapes(loaded):
  """{branch: input shape of the float32 graph it calls} for the run-time switch in the loaded
  root's float32 inference trace."""
  (trace,) = [f for f in loaded.__call__.concrete_functions
              if f.structured_input_signature[0] == (
                  tf.TensorSpec([None, 3, None, None, None], tf.float32, name="video"), False)]
  library = {f.signature.name: f for f in trace.graph.as_graph_def().library.function}
  (switch,) = [op for op in trace.graph.get_operations() if op.type in ("If", "StatelessIf")]
  shapes = {}
  for branch in ("then_branch", "else_branch"):
    (callee,) = [node.attr["f"].func.name for node in library[switch.get_attr(branch).name].node_def
                 if node.op in ("PartitionedCall", "StatefulPartitionedCall")]
    shape = library[callee].arg_attr[0].attr["_output_shapes"].list.shape[0]
    shapes[branch] = [None if d.size < 0 else d.size for d in shape.dim]
  return shapes


def test_clips_of_the_export_shape_run_the_fixed_graph(exported):
  """The root keeps only run-time-shape traces (a fixed trace would also be picked for unknown
  sizes) and switches at run time: the export's clip shape runs the graph traced for it."""
  _, path = exported
  loaded = tf.saved_model.load(path)
  for function in loaded.__call__.concrete_functions:
    assert function.structured_input_signature[0][0].shape.as_list() == [None, 3, None, None, None]
  assert branch_input_shapes(loaded) == {"then_branch": [None, 3, *FIXED],
                                         "else_branch": [None, 3, None, None, None]}


def test_serving_signatures(exported):
  reference, path = exported
  signatures = tf.saved_model.load(path).signatures
  assert sorted(signatures) == ["serving_default", "serving_dynamic"]
  for name, shape in [("serving_default", [None, 3, *FIXED]),
                      ("serving_dynamic", [None, 3, None, None, None])]:
    (spec,) = signatures[name].structured_input_signature[1].values()
    assert spec.name == "video" and spec.dtype == tf.float32 and spec.shape.as_list() == shape
    assert list(signatures[name].structured_outputs) == ["features"]
  video = np.random.RandomState(10).rand(2, 3, 18, 100, 132).astype(np.float32)
  got = signatures["serving_dynamic"](video=tf.constant(video))["features"].numpy()
  assert relative_error(got, reference_features(reference, video)) < TOLERANCE


def test_fixed_signature_refuses_other_shapes_clearly(exported):
  _, path = exported
  serving = tf.saved_model.load(path).signatures["serving_default"]
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    serving(video=tf.zeros([1, 3, 8, 112, 112]))
  message = str(error.value)
  assert "serving_default takes video [batch, 3, 32, 224, 224]; use serving_dynamic" in message
  assert "[1 3 8 112 112]" in message
  assert "reshape" not in message.lower()


def test_a_save_builds_each_float32_graph_once(exported):
  """The fixed clip shape and any other, each with both `training` values: four graphs, whatever
  the number of input dtypes `__call__` is traced for (a save that traced them twice took 1.5x
  as long)."""
  del exported
  fixed_map = (None, 16, 7, 7, 8 * small_variant().architecture.embed_dim)
  any_map = (None, None, None, None, fixed_map[-1])
  assert sorted(SAVE_TRACES, key=repr) == sorted(
      [(fixed_map, False), (fixed_map, True), (any_map, False), (any_map, True)], key=repr)


def test_graph_stays_small_next_to_the_weights(exported):
  """Six traces of `__call__` share four float32 graphs; saved_model.pb stays a few MB for any
  model."""
  _, path = exported
  graph = os.path.getsize(os.path.join(path, "saved_model.pb"))
  assert graph < 4_000_000
