"""Video files -> the RGB frames a sampling needs, decoded with PyAV (FFmpeg) in one streaming pass.

Memory does not grow with the video's length: a first pass only demuxes (counts the video
stream's packets, no decoding), the sampling picks frame indices from that count, and the
decoding pass keeps only the frames at those indices. When the decoder yields another number of
frames than there were packets (a damaged tail, an unusual codec), the indices are recomputed from
the decoded count and the video decoded once more, so the frames are always those that sampling
the video's decodable frames gives.
"""

import dataclasses
from typing import Callable

import av
import numpy as np


class VideoError(Exception):
  """A file that gives no usable video; `str()` names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class SampledFrames:
  """The frames of one video that its views are made of.

  Attributes:
    frames: `[U, height, width, 3]` uint8 RGB, the distinct sampled frames in presentation order.
    clip_frames: `[num_clips, clip_len]` int64 indices into `frames`: clip c's i-th frame is
      `frames[clip_frames[c, i]]`.
    num_frames: the video's decodable frames.
  """
  frames: np.ndarray
  clip_frames: np.ndarray
  num_frames: int


# num_frames -> `[num_clips, clip_len]` int64 frame indices, e.g. sampling.frame_indices.
IndexFn = Callable[[int], np.ndarray]


def _open(path: str):
  # PyAV opens local files itself; file objects let it read gs:// and other remote paths. Only a
  # remote path loads TensorFlow (for tf.io.gfile), so a decoding process stays small.
  if "://" in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return av.open(tf.io.gfile.GFile(path, "rb"))
  return av.open(path)


def _count_packets(path: str) -> int:
  with _open(path) as container:
    if not container.streams.video:
      raise VideoError(path, "no video stream")
    stream = container.streams.video[0]
    return sum(1 for packet in container.demux(stream) if packet.size)


def _decode_wanted(path: str, wanted: np.ndarray):
  """(frames at the sorted distinct indices `wanted`, or None where the video has no such frame;
  decoded frame count). Frames whose size differs from the first frame's are rescaled to it."""
  kept = [None] * len(wanted)
  count = 0
  with _open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    width = height = None
    slot = 0
    for frame in container.decode(stream):
      if width is None:
        width, height = frame.width, frame.height
      if slot < len(wanted) and wanted[slot] == count:
        kept[slot] = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
        slot += 1
      count += 1
  return kept, count


def sample(path: str, indices: IndexFn, min_frames: int = 1) -> SampledFrames:
  """Decodes the frames of the first video stream of `path` (local, or any URL tf.io.gfile
  reads) that `indices` selects, keeping no other frame in memory.

  Raises:
    VideoError: the file cannot be read or parsed, has no video stream, or fewer than
      `min_frames` (at least 1) decodable frames.
  """
  needed = max(min_frames, 1)
  try:
    num_frames = _count_packets(path)
    for _ in range(2):  # The second pass only when the packet count was not the frame count.
      clip_indices = indices(num_frames) if num_frames >= needed else np.zeros([0, 0], np.int64)
      wanted, clip_frames = np.unique(clip_indices, return_inverse=True)
      kept, decoded = _decode_wanted(path, wanted)
      if decoded == num_frames or decoded < needed:
        break
      num_frames = decoded
  except av.FFmpegError as error:
    # FFmpeg's own words, without the errno and path that str() adds.
    raise VideoError(path, f"cannot decode: {error.strerror or error}") from error
  except OSError as error:
    raise VideoError(path, f"cannot read: {error.strerror or error}") from error
  except Exception as error:  # pylint: disable=broad-except
    # tf.io.gfile's errors for remote paths (TensorFlow is not imported for local ones).
    if type(error).__module__.startswith("tensorflow"):
      raise VideoError(path, f"cannot read: {getattr(error, 'message', error)}") from error
    raise
  if decoded < needed:
    raise VideoError(path, f"too short: {decoded} decodable frames, at least {needed} needed")
  if any(frame is None for frame in kept):
    raise VideoError(path, "cannot decode: the decodable frames changed between two passes")
  return SampledFrames(np.stack(kept), clip_frames.reshape(clip_indices.shape), decoded)

