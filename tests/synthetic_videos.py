"""Real video files for tests: H.264 mp4 written with PyAV, and broken files."""

import fractions

import av
import numpy as np


def frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """`[num_frames, height, width, 3]` uint8: a moving gradient plus noise, so frames differ."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  out = np.empty([num_frames, height, width, 3], np.uint8)
  for t in range(num_frames):
    out[t, ..., 0] = (x * 255 // max(width - 1, 1) + 7 * t) % 256
    out[t, ..., 1] = (y * 255 // max(height - 1, 1) + 3 * t) % 256
    out[t, ..., 2] = rng.integers(0, 256, [height, width])
  return out


def write_mp4(path, num_frames: int, height: int, width: int, fps: int = 25,
              seed: int = 0) -> str:
  """Writes an H.264 mp4 (yuv420p, so height and width must be even) and returns its path."""
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(fps))
    stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
    for image in frames(num_frames, height, width, seed):
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
