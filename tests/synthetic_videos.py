"""Real video files for tests: H.264 mp4 written with PyAV, and broken files."""

import fractions
from typing import Iterator

import av
import numpy as np


def iter_frames(num_frames: int, height: int, width: int, seed: int = 0,
                noise: bool = True) -> Iterator[np.ndarray]:
  """`[height, width, 3]` uint8 frames, one at a time: a moving gradient plus noise, so frames
  differ (without `noise`, blue is a moving stripe pattern: quick to encode and decode)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  # uint8 additions wrap around: (gradient + step) % 256.
  red = (x * 255 // max(width - 1, 1)).astype(np.uint8)
  green = (y * 255 // max(height - 1, 1)).astype(np.uint8)
  diagonal = (x + y).astype(np.int32)
  for t in range(num_frames):
    out = np.empty([height, width, 3], np.uint8)
    out[..., 0] = red + np.uint8(7 * t % 256)
    out[..., 1] = green + np.uint8(3 * t % 256)
    out[..., 2] = (rng.integers(0, 256, [height, width]) if noise else
                   ((diagonal + 5 * t) >> 3 & 1) * 255)
    yield out


def frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """`[num_frames, height, width, 3]` uint8: `iter_frames` stacked."""
  return np.stack(list(iter_frames(num_frames, height, width, seed)))


def write_mp4(path, num_frames: int, height: int, width: int, fps: int = 25,
              seed: int = 0, preset: str = "medium", noise: bool = True) -> str:
  """Writes an H.264 mp4 (yuv420p, so height and width must be even) and returns its path;
  frames are generated one at a time, so any length fits in memory. `preset` is x264's
  (`ultrafast` for long test videos); `noise` as in `iter_frames`."""
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(fps),
                                  options={"preset": preset})
    stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
    for image in iter_frames(num_frames, height, width, seed, noise):
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return str(path)


def write_corrupt(path) -> str:
  """A file named like a video that holds no decodable stream."""
  with open(path, "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
  return str(path)
