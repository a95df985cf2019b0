"""Shared by the extraction tests: a folder of small real videos and how the tools are run on it."""

import collections
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from conftest import export_small_model
from synthetic_videos import write_corrupt, write_mp4

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ids (paths relative to the video folder) of the videos the tools extract...
GOOD = ("a.mp4", "c.mp4", "sub/b.mp4")
# ... and of those they refuse, with the reason errors.tsv gives.
BAD = {
    "corrupt.mp4": "cannot decode: Invalid data found when processing input",
    "short.mp4": "too short: 2 decodable frames, at least 4 needed",
}
# For the 8x56x56 test model: 2 clips x 3 crops = 6 views per video, so a batch of 4 views spans
# two videos.
JOB_SETTINGS = dict(num_clips=2, short_side=56, min_frames=4)
RUN_SETTINGS = dict(batch_size=4, shard_size=2)
FLAGS = ["--num_clips=2", "--short_side=56", "--min_frames=4", "--batch_size=4", "--shard_size=2"]


def write_videos(root):
  """Writes the videos under `root`, plus `all.txt` (every video, with a duplicate, a comment
  and a blank line) and `good.txt` (GOOD only). Returns `root`."""
  os.makedirs(root / "sub")
  write_mp4(root / "a.mp4", 40, 48, 64, fps=25, seed=1)
  write_mp4(root / "sub" / "b.mp4", 24, 96, 80, fps=12, seed=2)  # portrait, 12 fps
  write_mp4(root / "c.mp4", 10, 64, 64, fps=30, seed=3)  # shorter than one clip: loops
  write_mp4(root / "short.mp4", 2, 48, 64, seed=4)  # below min_frames
  write_corrupt(root / "corrupt.mp4")
  (root / "all.txt").write_text("# every test video\na.mp4\nsub/b.mp4\n\nc.mp4\nshort.mp4\n"
                                f"corrupt.mp4\n{root}/a.mp4\n")
  (root / "good.txt").write_text("\n".join(GOOD) + "\n")
  return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A random-weight small model (input 8x56x56); test files use it by importing this fixture."""
  return export_small_model(str(tmp_path_factory.mktemp("model") / "small"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """The folder `write_videos` fills; test files use it by importing this fixture."""
  return write_videos(tmp_path_factory.mktemp("videos"))


def decode_all(path):
  """Every frame of `path`, `[N, height, width, 3]` uint8, decoded with PyAV directly: the
  reference that the tools' streaming decoder is compared with."""
  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def run_module(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300, check=False)


def rows(output_dir):
  """{video_id: {"path", "features", "num_views"}} read through records.read_features; fails on
  a video stored twice."""
  from video_swin_hub.extraction import records  # pylint: disable=g-import-not-at-top
  out = {}
  for row in records.read_features(str(output_dir)).as_numpy_iterator():
    video_id = row["video_id"].decode()
    assert video_id not in out, f"{video_id} stored twice"
    out[video_id] = {"path": row["path"].decode(), "features": row["features"],
                     "num_views": int(row["num_views"])}
  return collections.OrderedDict(sorted(out.items()))


def visible_files(root):
  """Relative paths of every file and folder under `root`."""
  return sorted(os.path.relpath(os.path.join(d, n), root)
                for d, dirs, files in os.walk(root) for n in dirs + files)
