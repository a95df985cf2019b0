"""Which videos to extract, and their ids.

`--videos` is either a glob (local or any scheme tf.io.gfile knows, such as gs://) or, when it
ends in `.txt` or `.lst`, a text file listing one path per line (blank lines and lines starting
with `#` are skipped; relative paths are relative to the list's folder).

A video's id is its path relative to the video root, extension kept
(`<root>/abseiling/x.mp4` -> `abseiling/x.mp4`): distinct paths give distinct ids, and the ids stay
the same whatever subset of files a run sees, which resuming relies on. The root is `--video_root`
when given; else, for a glob, the folder before its first wildcard; for a list, the deepest folder
holding every listed path.
"""

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf

LIST_SUFFIXES = (".txt", ".lst")
_WILDCARDS = "*?["


class InputError(Exception):
  """No videos, an unreadable list, or a video outside the root."""


@dataclasses.dataclass(frozen=True)
class VideoRef:
  """One video to extract: `video_id` (unique within a run) and the `path` it is read from."""
  video_id: str
  path: str


def _normalise(path: str) -> str:
  # Local paths become absolute so that ids and roots do not depend on the working folder.
  return path if "://" in path else os.path.abspath(path)


def _glob_root(pattern: str) -> str:
  """The folder part of `pattern` before its first wildcard."""
  head = pattern[:min([pattern.find(c) for c in _WILDCARDS if c in pattern] or [len(pattern)])]
  return (head.rsplit("/", 1)[0] or "/") if "/" in head else "."


def _common_folder(paths: Sequence[str]) -> str:
  """The deepest folder holding all `paths` (compared by '/'-separated parts, so URLs work)."""
  parts = [p.split("/")[:-1] for p in paths]
  common = parts[0]
  for other in parts[1:]:
    n = 0
    while n < min(len(common), len(other)) and common[n] == other[n]:
      n += 1
    common = common[:n]
  return "/".join(common) or "/"


def _read_list(list_path: str) -> List[str]:
  try:
    with tf.io.gfile.GFile(list_path) as f:
      lines = f.read().splitlines()
  except tf.errors.OpError as error:
    raise InputError(f"cannot read video list {list_path}: {error.message}") from error
  folder = os.path.dirname(list_path)
  paths = []
  for line in lines:
    line = line.strip()
    if line and not line.startswith("#"):
      paths.append(line if "://" in line or os.path.isabs(line) else os.path.join(folder, line))
  return paths


def list_videos(videos: str, video_root: Optional[str] = None) -> Tuple[str, List[VideoRef]]:
  """Expands `--videos` into (root, videos sorted by id), duplicates dropped.

  Raises:
    InputError: nothing matched, the list is unreadable, or a path is not under `video_root`.
  """
  if videos.endswith(LIST_SUFFIXES):
    paths = [_normalise(p) for p in _read_list(videos)]
    default_root = _common_folder(paths) if paths else ""
  else:
    try:
      paths = [_normalise(p) for p in tf.io.gfile.glob(videos)]
    except tf.errors.OpError as error:
      raise InputError(f"cannot list {videos}: {error.message}") from error
    default_root = _normalise(_glob_root(videos))
  if not paths:
    raise InputError(f"no videos matched {videos}")
  root = _normalise(video_root) if video_root else default_root
  prefix = root.rstrip("/") + "/"
  refs = {}
  for path in paths:
    if not path.startswith(prefix):
      raise InputError(f"{path} is not under the video root {root}")
    refs.setdefault(path, VideoRef(path[len(prefix):], path))
  return root, sorted(refs.values(), key=lambda ref: ref.video_id)
