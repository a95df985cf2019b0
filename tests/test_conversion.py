"""Checkpoint layouts and the strict checks of conversion."""

import numpy as np
import pytest

import torch_reference
from conftest import small_variant
from video_swin_hub.hub_models import conversion, variants
from video_swin_hub.hub_models.backbone import VideoSwinBackbone
from video_swin_hub.hub_models.head import ClassificationHead


@pytest.fixture(scope="module")
def reference():
  variant = small_variant()
  return variant, torch_reference.reference_model(variant.architecture, variant.num_classes)


def as_numpy(state):
  return {key: value.numpy() for key, value in state.items()}


def official(model):
  return as_numpy(torch_reference.torchvision_to_official(model.state_dict()))


def converted_variables(variant, checkpoint_object, with_head=True):
  backbone = VideoSwinBackbone(variant.architecture)
  head = ClassificationHead(variant.architecture.num_features, variant.num_classes)
  conversion.load_weights(conversion.canonical_state_dict(checkpoint_object), variant, backbone,
                          head if with_head else None)
  return [v.numpy() for v in backbone.variables + (head.variables if with_head else ())]


def test_layouts_convert_to_the_same_model(reference):
  variant, model = reference
  official_state = official(model)
  expected = converted_variables(variant, {"state_dict": official_state, "meta": {}})
  mmaction2 = {k.replace("backbone.norm.", "backbone.norm3."): v for k, v in official_state.items()}
  bare_backbone = {k[len("backbone."):]: v for k, v in official_state.items()
                   if k.startswith("backbone.")}
  layouts = {
      "mmaction2": ({"state_dict": mmaction2}, True),
      "torchvision": (as_numpy(model.state_dict()), True),
      "bare official": (official_state, True),
      "data-parallel": ({"state_dict": {"module." + k: v for k, v in official_state.items()}}, True),
      "bare backbone": (bare_backbone, False),
  }
  for name, (checkpoint_object, with_head) in layouts.items():
    got = converted_variables(variant, checkpoint_object, with_head)
    want = expected if with_head else expected[:len(got)]
    assert len(got) == len(want), name
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w, err_msg=name)


def test_every_backbone_variable_is_assigned(reference):
  variant, model = reference
  backbone = VideoSwinBackbone(variant.architecture)
  before = [v.numpy().copy() for v in backbone.variables]
  conversion.load_weights(official(model), variant, backbone)
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, backbone.variables)]
  assert all(changed)


def check_refused(variant, state, *fragments, with_head=False):
  backbone = VideoSwinBackbone(variant.architecture)
  before = [v.numpy().copy() for v in backbone.variables]
  with pytest.raises(conversion.ConversionError) as error:
    conversion.load_weights(state, variant, backbone,
                            ClassificationHead(variant.architecture.num_features,
                                               variant.num_classes) if with_head else None)
  message = str(error.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message
  # Nothing was assigned.
  for b, v in zip(before, backbone.variables):
    np.testing.assert_array_equal(b, v.numpy())
  return message


def test_missing_key_is_named(reference):
  variant, model = reference
  state = official(model)
  del state["backbone.layers.2.blocks.1.mlp.fc2.weight"]
  check_refused(variant, state, "missing key backbone.layers.2.blocks.1.mlp.fc2.weight")


def test_wrong_shape_names_key_and_both_shapes(reference):
  variant, model = reference
  state = official(model)
  state["backbone.layers.1.blocks.0.attn.qkv.weight"] = np.zeros([144, 40], np.float32)
  check_refused(variant, state, "backbone.layers.1.blocks.0.attn.qkv.weight", "[144, 40]",
                "[144, 48]")


def test_unexpected_key_is_refused(reference):
  variant, model = reference
  state = official(model)
  state["backbone.layers.4.blocks.0.norm1.weight"] = np.ones([8], np.float32)
  check_refused(variant, state, "unexpected key backbone.layers.4.blocks.0.norm1.weight", "[8]")


def test_head_may_be_dropped_but_is_required_when_asked_for(reference):
  variant, model = reference
  state = {k: v for k, v in official(model).items() if not k.startswith("cls_head.")}
  conversion.load_weights(state, variant, VideoSwinBackbone(variant.architecture))
  check_refused(variant, state, "missing key cls_head.fc_cls.weight", with_head=True)


def test_class_count_must_match_variant(reference):
  _, model = reference
  k600 = small_variant(num_classes=600)
  message = check_refused(k600, official(model), "cls_head.fc_cls.weight", "10 classes",
                          "600")
  assert k600.name in message


def test_class_count_of_real_variants():
  """A K400 checkpoint given as the K600 variant is refused before any tensor is read."""
  k600 = variants.get("swin_base_patch244_window877_kinetics600_22k")
  state = {"cls_head.fc_cls.weight": np.zeros([400, 1024], np.float32)}
  with pytest.raises(conversion.ConversionError, match="400 classes but variant "
                     "swin_base_patch244_window877_kinetics600_22k has 600"):
    conversion.load_weights(state, k600, VideoSwinBackbone(k600.architecture))


def test_window_must_match_variant(reference):
  _, model = reference
  wide = small_variant(window_size=(16, 7, 7))
  state = {k: v for k, v in official(model).items() if "relative_position_index" not in k}
  check_refused(wide, state, "relative_position_bias_table has shape [2535, 1]", "[5239, 1]",
                "another window size")
  check_refused(wide, official(model), "relative_position_index has shape [392, 392]",
                "another window size")


def test_stored_relative_index_must_equal_recomputed(reference):
  variant, model = reference
  state = official(model)
  key = "backbone.layers.0.blocks.1.attn.relative_position_index"
  state[key] = state[key].T.copy()
  check_refused(variant, state, key, "differs from the index recomputed")


def test_unknown_layout_is_refused():
  with pytest.raises(conversion.ConversionError, match="no Video Swin weights found"):
    conversion.canonical_state_dict({"state_dict": {"encoder.weight": np.zeros(3)}})
  with pytest.raises(conversion.ConversionError, match="'state_dict' is a list"):
    conversion.canonical_state_dict({"state_dict": [1, 2]})
