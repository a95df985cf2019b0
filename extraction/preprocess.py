"""Sampled frames -> the model's input views: resized, cropped, channels first, [0, 1]."""

import numpy as np
import tensorflow as tf

from . import sampling as sampling_lib


def clip_views(frames: np.ndarray, clip_frames: np.ndarray,
               sampling: sampling_lib.Sampling) -> np.ndarray:
  """All views of one video, in the model's input contract, from its distinct sampled frames.

  Each frame is resized once with `tf.image.resize` (bilinear, half-pixel centres, no
  antialiasing: what OpenCV's bilinear resize in the reference pipeline computes) and kept in
  float32 rather than rounded back to uint8. Crops are then cut and pixels scaled to [0, 1]; the
  model applies the mean/std normalisation itself.

  Args:
    frames: `[U, height, width, 3]` uint8 RGB, the distinct frames the clips use.
    clip_frames: `[num_clips, clip_len]` int64 indices into `frames`.
    sampling: the protocol and sizes.

  Returns:
    `[num_clips * num_crops, 3, T, H, W]` float32 in [0, 1], clip-major (the crops of clip 0
    first), where (T, H, W) = (clip_len, *crop_size).
  """
  size = sampling_lib.resized_size(frames.shape[1], frames.shape[2], sampling.short_side)
  resized = tf.image.resize(frames, size, method="bilinear").numpy()
  crop_h, crop_w = sampling.crop_size
  crops = np.stack([resized[:, top:top + crop_h, left:left + crop_w]
                    for top, left in sampling_lib.crop_offsets(*size, sampling.crop_size,
                                                               sampling.num_crops)])
  # [crops, U, H, W, 3] -> [crops, clips, T, H, W, 3] -> [clips, crops, 3, T, H, W].
  clips = crops[:, clip_frames].transpose(1, 0, 5, 2, 3, 4)
  out = clips.reshape(-1, 3, sampling.clip_len, crop_h, crop_w)
  return out / np.float32(255)


def views(frames: np.ndarray, sampling: sampling_lib.Sampling) -> np.ndarray:
  """`clip_views` of a whole decoded video `[N, height, width, 3]` uint8 (N >= 1): the frames
  `sampling` picks for N frames."""
  indices = sampling_lib.frame_indices(sampling, len(frames))
  # Clips overlap or repeat frames: resize each distinct frame once.
  unique, inverse = np.unique(indices, return_inverse=True)
  return clip_views(frames[unique], inverse.reshape(indices.shape), sampling)
