"""The feature extractor as the extraction tools use it: a Hub handle's `serving_default`."""

from typing import Tuple

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

SIGNATURE = "serving_default"


class ModelError(Exception):
  """A handle that does not load, or whose signature is not a video feature extractor."""


class FeatureModel:
  """Views `[B, 3, T, H, W]` float32 RGB in [0, 1] -> features `[B, D]` float32.

  Loads `handle` (anything `hub.load` resolves: a local SavedModel folder, gs://, a URL) and calls
  its `serving_default` signature (`video` -> {"features"}). T, H, W and D are read from the
  signature, so a model exported at another input size works unchanged. Calls are thread-safe.
  """

  def __init__(self, handle: str):
    self.handle = handle
    try:
      loaded = hub.load(handle)
    except (OSError, ValueError, tf.errors.OpError) as error:
      raise ModelError(f"cannot load model {handle}: {error}") from error
    if SIGNATURE not in loaded.signatures:
      raise ModelError(f"model {handle} has no {SIGNATURE} signature")
    self._signature = loaded.signatures[SIGNATURE]
    inputs = self._signature.structured_input_signature[1]
    outputs = self._signature.structured_outputs
    video = inputs.get("video")
    features = outputs.get("features")
    if (video is None or features is None or video.shape.rank != 5 or video.shape[1] != 3
        or not video.shape[2:].is_fully_defined() or features.shape.rank != 2
        or features.shape[1] is None):
      raise ModelError(f"model {handle}: {SIGNATURE} is not video [None, 3, T, H, W] -> "
                       f"features [None, D] (it takes {inputs}, gives {outputs})")
    self.input_size: Tuple[int, int, int] = tuple(video.shape[2:])
    self.feature_dim: int = features.shape[1]

  def __call__(self, views: np.ndarray) -> np.ndarray:
    """`[B, 3, T, H, W]` float32 -> `[B, D]` float32."""
    return self._signature(video=tf.constant(views))["features"].numpy()
