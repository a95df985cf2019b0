"""Video files -> RGB frames, decoded with PyAV (FFmpeg)."""

import dataclasses
from typing import Optional

import av
import numpy as np
import tensorflow as tf


class VideoError(Exception):
  """A file that gives no usable video; `str()` names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Video:
  """A decoded video.

  Attributes:
    frames: `[N, height, width, 3]` uint8 RGB, every decodable frame in presentation order.
    fps: the stream's average frame rate, or None when the container does not say.
  """
  frames: np.ndarray
  fps: Optional[float]


def decode(path: str) -> Video:
  """Decodes the first video stream of `path` (a local path, or any URL tf.io.gfile reads).

  The whole video is held in memory (a 10 s Kinetics clip at 340x256 is about 80 MB). Frames
  whose size differs from the first frame's are rescaled to it. A stream without any decodable
  frame gives N = 0.

  Raises:
    VideoError: the file cannot be read or parsed, or has no video stream.
  """
  try:
    # PyAV opens local files itself; file objects let it read gs:// and other remote paths.
    source = tf.io.gfile.GFile(path, "rb") if "://" in path else path
    with av.open(source) as container:
      if not container.streams.video:
        raise VideoError(path, "no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      width, height = stream.codec_context.width, stream.codec_context.height
      frames = []
      for frame in container.decode(stream):
        if not frames:
          width, height = frame.width, frame.height
        frames.append(frame.reformat(width=width, height=height, format="rgb24").to_ndarray())
      fps = float(stream.average_rate) if stream.average_rate else None
  except av.FFmpegError as error:
    # FFmpeg's own words, without the errno and path that str() adds.
    raise VideoError(path, f"cannot decode: {error.strerror or error}") from error
  except tf.errors.OpError as error:
    raise VideoError(path, f"cannot read: {error.message}") from error
  except OSError as error:
    raise VideoError(path, f"cannot read: {error.strerror or error}") from error
  if not frames:
    return Video(np.zeros([0, height, width, 3], np.uint8), fps)
  return Video(np.stack(frames), fps)
