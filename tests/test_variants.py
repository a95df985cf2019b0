"""The registry's facts, checked against the published figures and the reference model."""

import numpy as np
import pytest

import torch_reference
from video_swin_hub.hub_models import variants
from video_swin_hub.hub_models.backbone import VideoSwinBackbone

# Backbone parameter counts published for the official checkpoints (head excluded).
PUBLISHED_BACKBONE_PARAMS = {
    "swin_tiny_patch244_window877_kinetics400_1k": 27_850_470,
    "swin_small_patch244_window877_kinetics400_1k": 49_509_078,
    "swin_base_patch244_window877_kinetics400_1k": 87_638_984,
    "swin_base_patch244_window877_kinetics400_22k": 87_638_984,
    "swin_base_patch244_window877_kinetics600_22k": 87_638_984,
    "swin_base_patch244_window1677_sthv2": 88_655_688,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_BACKBONE_PARAMS))
def test_parameter_count_equals_published(name):
  backbone = VideoSwinBackbone(variants.get(name).architecture)
  assert sum(int(np.prod(v.shape)) for v in backbone.trainable_variables) == \
      PUBLISHED_BACKBONE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(variants.VARIANTS))
def test_parameter_count_equals_reference(name):
  variant = variants.get(name)
  reference = torch_reference.reference_model(variant.architecture, variant.num_classes)
  head = variant.num_classes * (variant.architecture.num_features + 1)
  want = sum(p.numel() for p in reference.parameters()) - head
  backbone = VideoSwinBackbone(variant.architecture)
  assert sum(int(np.prod(v.shape)) for v in backbone.trainable_variables) == want


def test_collection_is_the_six_mission_variants():
  assert [v.name for v in variants.collection()] == [
      "swin_tiny_patch244_window877_kinetics400_1k",
      "swin_small_patch244_window877_kinetics400_1k",
      "swin_base_patch244_window877_kinetics400_1k",
      "swin_base_patch244_window877_kinetics400_22k",
      "swin_base_patch244_window877_kinetics600_22k",
      "swin_base_patch244_window1677_sthv2",
  ]


def test_known_errors_of_the_2022_collection_are_not_repeated():
  b1k = variants.get("swin_base_patch244_window877_kinetics400_1k")
  assert (b1k.top1, b1k.top5) == (80.6, 94.6)
  k400_22k = variants.get("swin_base_patch244_window877_kinetics400_22k")
  k600 = variants.get("swin_base_patch244_window877_kinetics600_22k")
  assert k400_22k.pretrain_dataset.name == k600.pretrain_dataset.name == "ImageNet-22K"
  assert k600.num_classes == 600 and k600.finetune_dataset.name == "Kinetics-600"
  assert all(k600.name in url for url in k600.checkpoint_urls)


def test_each_variant_has_its_own_checkpoint():
  urls = [url for v in variants.VARIANTS.values() for url in v.checkpoint_urls]
  assert len(urls) == len(set(urls))
  for variant in variants.collection():
    assert variant.checkpoint_urls == (
        "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/"
        f"{variant.name}.pth",)


def test_unknown_variant_error_lists_names():
  with pytest.raises(variants.UnknownVariantError) as error:
    variants.get("swin_base_patch244_window877_kinetics600_1k")
  for name in variants.VARIANTS:
    assert name in str(error.value)
