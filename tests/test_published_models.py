"""Published-model naming, input sizes and output shapes, checked against the built modules."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import small_variant
from video_swin_hub.export import published_models
from video_swin_hub.hub_models.backbone import VideoSwinBackbone
from video_swin_hub.hub_models.head import ClassificationHead
from video_swin_hub.hub_models import hub_module
from video_swin_hub.hub_models import variants

TINY = variants.get("swin_tiny_patch244_window877_kinetics400_1k")
OUTPUTS = published_models.OUTPUTS


def test_names_add_a_suffix_only_when_not_the_default():
  assert published_models.PublishedModel(TINY).name == TINY.name
  assert (published_models.PublishedModel(TINY, OUTPUTS["logits"]).name
          == f"{TINY.name}_classification")
  assert (published_models.PublishedModel(TINY, OUTPUTS["feature_map"], (16, 160, 160)).name
          == f"{TINY.name}_feature_map_16x160x160")
  assert (published_models.PublishedModel(TINY, OUTPUTS["feature_map"], (16, 160, 160),
                                          published_models.PRECISIONS["bfloat16"]).name
          == f"{TINY.name}_feature_map_bf16_16x160x160")
  names = {published_models.PublishedModel(v, o, size, p).name
           for v in variants.VARIANTS.values() for o in OUTPUTS.values()
           for size in [(32, 224, 224), (16, 224, 224)]
           for p in published_models.PRECISIONS.values()}
  assert len(names) == (len(variants.VARIANTS) * len(OUTPUTS) * 2
                        * len(published_models.PRECISIONS))


def test_full_size_shapes():
  assert published_models.PublishedModel(TINY).output_shape == (768,)
  assert published_models.PublishedModel(TINY, OUTPUTS["logits"]).output_shape == (400,)
  assert (published_models.PublishedModel(TINY, OUTPUTS["feature_map"]).output_shape
          == (768, 16, 7, 7))


@pytest.mark.parametrize("values,message", [
    (["32", "224"], "needs frames,height,width"),
    (["32", "224", "x"], "must be integers"),
    (["0", "224", "224"], "must be positive"),
])
def test_bad_input_sizes_are_refused(values, message):
  with pytest.raises(published_models.InputSizeError, match=message):
    published_models.parse_input_size(values)


def test_unknown_precision_lists_the_valid_ones():
  with pytest.raises(published_models.UnknownPrecisionError,
                     match="^unknown precision 'float16'; valid precisions: float32, bfloat16$"):
    published_models.get_precision("float16")


def test_unknown_output_lists_the_valid_ones():
  with pytest.raises(published_models.UnknownOutputError, match="features, logits, feature_map"):
    published_models.get_output("embedding")


@pytest.mark.parametrize("input_size", [(8, 56, 56), (5, 45, 71), (18, 100, 132)])
def test_declared_shapes_match_the_built_modules(input_size):
  variant = small_variant(num_classes=7)
  backbone = VideoSwinBackbone(variant.architecture)
  head = ClassificationHead(variant.architecture.num_features, variant.num_classes)
  video = tf.random.uniform([2, 3, *input_size])
  for output in OUTPUTS.values():
    model = published_models.PublishedModel(variant, output, input_size)
    extra = {"head": head} if output.keeps_head else {}
    module = getattr(hub_module, output.module)(backbone, input_size=input_size, **extra)
    result = module(video)
    assert tuple(result.shape) == (2, *model.output_shape), output.key
    assert module.output_key == output.key


def test_feature_map_mean_is_the_pooled_feature():
  variant = small_variant()
  backbone = VideoSwinBackbone(variant.architecture)
  video = tf.random.uniform([1, 3, 8, 56, 56])
  feature_map = hub_module.FeatureMapExtractor(backbone, (8, 56, 56))(video).numpy()
  pooled = hub_module.FeatureExtractor(backbone, (8, 56, 56))(video).numpy()
  np.testing.assert_allclose(feature_map.mean(axis=(2, 3, 4)), pooled, rtol=1e-5, atol=1e-6)


def test_identity_round_trips_and_refuses_unknown_names():
  model = published_models.PublishedModel(TINY, OUTPUTS["logits"], (16, 160, 160))
  record = published_models.identity(model)
  assert record == {"variant": TINY.name, "output": "logits", "input_size": [16, 160, 160],
                    "precision": "float32"}
  assert published_models.from_identity(record) == model
  with pytest.raises(published_models.IdentityError, match="swin_huge"):
    published_models.from_identity(dict(record, variant="swin_huge"))
  with pytest.raises(published_models.IdentityError, match="input_size"):
    published_models.from_identity({"variant": TINY.name, "output": "logits"})
