"""The papers' test-time view sampling, as pure functions of frame counts and frame sizes.

Two temporal protocols (the mmaction2 test pipelines of the Video Swin configs):
  kinetics: `num_clips` clips of `clip_len` frames taken every `frame_interval` frames, their
    starts spread evenly over the video (Kinetics: 32 frames x interval 2, 4 clips).
  ssv2: one clip of `clip_len` frames spread uniformly over the whole video (Something-Something
    V2: 32 frames, 1 clip).
Spatially each clip is resized so that its short side is `short_side` (aspect ratio kept), then
cut into 1 centre crop or 3 crops along the long side (the papers: short side 224, 3 crops of 224;
a single validation-style view is short side 256 and 1 centre crop of 224).

Short videos (padding policy): kinetics clips that do not fit all start at frame 0 and their frame
indices wrap around to the video's start (loop), so a video of any length >= 1 frame gives full
clips; ssv2 repeats frames when the video has fewer than `clip_len`. Whether a video is too short
to use at all is the caller's `min_frames` decision, not this module's.
"""

import dataclasses
from typing import List, Tuple

import numpy as np

KINETICS = "kinetics"
SSV2 = "ssv2"
PROTOCOLS = (KINETICS, SSV2)


class SamplingError(ValueError):
  """Settings that cannot sample views for the model (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Everything that decides which pixels become the model's views.

  Attributes:
    protocol: KINETICS or SSV2.
    clip_len: frames per clip: T of the model's input `[None, 3, T, H, W]`.
    crop_size: (H, W) of the model's input.
    num_clips: clips per video (SSV2 takes exactly 1).
    num_crops: 1 (centre) or 3 (both ends and centre of the long side).
    short_side: the short side of the resized frames; at least max(crop_size).
    frame_interval: frame step inside a KINETICS clip (SSV2 ignores it).
  """
  protocol: str
  clip_len: int
  crop_size: Tuple[int, int]
  num_clips: int
  num_crops: int
  short_side: int
  frame_interval: int = 2

  def __post_init__(self):
    if self.protocol not in PROTOCOLS:
      raise SamplingError(f"unknown protocol {self.protocol!r} (known: {', '.join(PROTOCOLS)})")
    if self.protocol == SSV2 and self.num_clips != 1:
      raise SamplingError(f"the ssv2 protocol takes 1 clip, not {self.num_clips}")
    if self.num_clips < 1 or self.clip_len < 1 or self.frame_interval < 1:
      raise SamplingError("num_clips, clip_len and frame_interval must be positive")
    if self.num_crops not in (1, 3):
      raise SamplingError(f"num_crops must be 1 or 3, not {self.num_crops}")
    if self.short_side < max(self.crop_size):
      raise SamplingError(f"short side {self.short_side} is smaller than the model's "
                          f"{self.crop_size[0]}x{self.crop_size[1]} crop")

  @property
  def num_views(self) -> int:
    return self.num_clips * self.num_crops


def kinetics_indices(num_frames: int, clip_len: int, frame_interval: int,
                     num_clips: int) -> np.ndarray:
  """Frame indices `[num_clips, clip_len]` int64 of the Kinetics test protocol.

  A clip counts `clip_len * frame_interval` frames (mmaction2's convention). The possible starts
  `0 .. num_frames - clip_len * frame_interval` are cut into `num_clips` equal segments and each
  clip starts at the middle of its segment, rounded down. When no clip fits, every clip starts at
  0. Indices past the last frame wrap around (loop).
  """
  if num_frames < 1:
    raise SamplingError("a video needs at least one frame")
  segment = (num_frames - clip_len * frame_interval + 1) / num_clips
  if segment > 0:
    starts = (np.arange(num_clips) * segment + segment / 2).astype(np.int64)
  else:
    starts = np.zeros([num_clips], np.int64)
  indices = starts[:, None] + np.arange(clip_len, dtype=np.int64)[None, :] * frame_interval
  return indices % num_frames


def uniform_indices(num_frames: int, clip_len: int) -> np.ndarray:
  """Frame indices `[1, clip_len]` int64 of the SSv2 test protocol.

  `[0, num_frames - 1]` is cut into `clip_len` segments whose bounds are rounded half to even
  (numpy's rounding, as the reference code); each frame is the middle of its segment, rounded down.
  """
  if num_frames < 1:
    raise SamplingError("a video needs at least one frame")
  bounds = np.round(np.arange(clip_len + 1) * ((num_frames - 1) / clip_len)).astype(np.int64)
  return ((bounds[:-1] + bounds[1:]) // 2)[None, :]


def frame_indices(sampling: Sampling, num_frames: int) -> np.ndarray:
  """Frame indices `[num_clips, clip_len]` int64 of `sampling`'s protocol for a video."""
  if sampling.protocol == KINETICS:
    return kinetics_indices(num_frames, sampling.clip_len, sampling.frame_interval,
                            sampling.num_clips)
  return uniform_indices(num_frames, sampling.clip_len)


def resized_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
  """(height, width) with the short side scaled to `short_side`; the long side rounds half up."""
  scale = short_side / min(height, width)
  if height <= width:
    return short_side, int(width * scale + 0.5)
  return int(height * scale + 0.5), short_side


def crop_offsets(height: int, width: int, crop_size: Tuple[int, int],
                 num_crops: int) -> List[Tuple[int, int]]:
  """(top, left) of each crop of `crop_size` in a `height` x `width` frame.

  One crop: the centre, offsets rounded down. Three crops: start, centre and end of the long side
  (left/centre/right for landscape frames, top/centre/bottom otherwise), centred on the short side;
  as in mmaction2, the end crop starts at twice the centre offset, so with an odd margin it stops
  one pixel short of the edge.
  """
  crop_h, crop_w = crop_size
  if crop_h > height or crop_w > width:
    raise SamplingError(f"a {crop_h}x{crop_w} crop does not fit a {height}x{width} frame")
  top, left = (height - crop_h) // 2, (width - crop_w) // 2
  if num_crops == 1:
    return [(top, left)]
  if height < width:
    return [(top, 0), (top, left), (top, 2 * left)]
  return [(0, left), (top, left), (2 * top, left)]
