"""Shared test helpers: a small architecture for quick tests and error measures."""

import os

# hub.KerasLayer is a Keras 2 layer: select tf_keras before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # pylint: disable=wrong-import-position

import numpy as np  # pylint: disable=wrong-import-position

from video_swin_hub.hub_models import variants  # pylint: disable=wrong-import-position

# A narrow four-stage model with the real window and head_dim structure, for quick tests.
SMALL_ARCH = variants.Architecture(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4),
                                   window_size=(8, 7, 7))


def small_variant(num_classes: int = 10, **arch_changes) -> variants.Variant:
  """A registry-shaped variant of SMALL_ARCH (not registered)."""
  return variants.Variant(
      name="test_small", architecture=dataclasses.replace(SMALL_ARCH, **arch_changes),
      num_classes=num_classes, checkpoint_urls=(), pretrain_dataset=variants.IMAGENET_1K,
      finetune_dataset=variants.KINETICS_400, top1=0.0, top5=0.0, eval_views="")


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """Frobenius-norm relative error."""
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def normalise(video01: np.ndarray) -> np.ndarray:
  """The official preprocessing for `[B, 3, T, H, W]` RGB in [0, 1], written out independently."""
  mean = np.array([123.675, 116.28, 103.53], np.float32).reshape(1, 3, 1, 1, 1)
  std = np.array([58.395, 57.12, 57.375], np.float32).reshape(1, 3, 1, 1, 1)
  return ((video01 * 255.0 - mean) / std).astype(np.float32)


def export_small_model(path: str, input_size=(8, 56, 56), seed: int = 0) -> str:
  """Saves a random-weight SMALL_ARCH feature extractor (input `[None, 3, *input_size]`) to `path`.

  Quick stand-in for a published model where the tests need a Hub handle, not parity.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from video_swin_hub.hub_models.backbone import VideoSwinBackbone  # pylint: disable=g-import-not-at-top
  from video_swin_hub.hub_models.hub_module import FeatureExtractor  # pylint: disable=g-import-not-at-top

  tf.keras.utils.set_random_seed(seed)
  backbone = VideoSwinBackbone(SMALL_ARCH)
  backbone(tf.zeros([1, *input_size, 3]))
  FeatureExtractor(backbone, input_size).save(path)
  return path
