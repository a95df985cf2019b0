"""The feature extractor as the extraction tools use it: a Hub handle's `serving_default`, or its
any-size `serving_dynamic` signature for clips of a chosen size."""

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

SIGNATURE = "serving_default"
# Exported models may also have this signature: video float32 [None, 3, None, None, None].
DYNAMIC_SIGNATURE = "serving_dynamic"


class ModelError(Exception):
  """A handle that does not load, or whose signature is not a video feature extractor."""


class FeatureModel:
  """Views `[B, 3, T, H, W]` float32 RGB in [0, 1] -> features `[B, D]` float32.

  Loads `handle` (anything `hub.load` resolves: a local SavedModel folder, gs://, a URL). Without
  `clip_size` it calls the `serving_default` signature (`video` -> {"features"}) and T, H, W are
  read from it, so a model exported at another input size works unchanged. With
  `clip_size=(T, H, W)` it calls `serving_dynamic`, whose input takes any size. D is read from the
  signature. Calls are thread-safe.
  """

  def __init__(self, handle: str, clip_size: Optional[Tuple[int, int, int]] = None):
    self.handle = handle
    self.signature = DYNAMIC_SIGNATURE if clip_size else SIGNATURE
    try:
      loaded = hub.load(handle)
    except (OSError, ValueError, tf.errors.OpError) as error:
      raise ModelError(f"cannot load model {handle}: {error}") from error
    if self.signature not in loaded.signatures:
      need = " (--clip_size needs a model exported with any-size input)" if clip_size else ""
      raise ModelError(f"model {handle} has no {self.signature} signature{need}")
    self._signature = loaded.signatures[self.signature]
    inputs = self._signature.structured_input_signature[1]
    outputs = self._signature.structured_outputs
    video = inputs.get("video")
    features = outputs.get("features")
    wanted = "[None, 3, None, None, None]" if clip_size else "[None, 3, T, H, W]"
    if (video is None or features is None or video.shape.rank != 5 or video.shape[1] != 3
        or (clip_size is None and not video.shape[2:].is_fully_defined())
        or (clip_size is not None and any(n is not None for n in video.shape[2:]))
        or features.shape.rank != 2 or features.shape[1] is None):
      raise ModelError(f"model {handle}: {self.signature} is not video {wanted} -> "
                       f"features [None, D] (it takes {inputs}, gives {outputs})")
    self.input_size: Tuple[int, int, int] = tuple(clip_size or video.shape[2:])
    self.feature_dim: int = features.shape[1]

  def __call__(self, views: np.ndarray) -> np.ndarray:
    """`[B, 3, T, H, W]` float32 -> `[B, D]` float32."""
    return self._signature(video=tf.constant(views))["features"].numpy()
