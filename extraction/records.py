"""The output folder both extraction tools write, and how to read it back.

  OUTPUT/features-<run>-<shard>.tfrecord   tf.train.Example per video (see `make_example`)
  OUTPUT/manifest.json                     model, sampling, input size, counts (see `manifest`)
  OUTPUT/errors.tsv                        header `path<TAB>reason`, one line per failed video

Shards are only ever visible complete: each is written under a hidden temporary name
(`.tmp-...`, which `SHARD_GLOB` does not match) and renamed when closed; Beam's file sinks do the
same through their own temporary folder. On gs:// a rename is a copy, and an object appears
whole when its copy finishes. The shards are the record of which videos are done: a later run
reads their `video_id`s and skips those videos.
"""

import datetime
import json
import os
import re
import secrets
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import tensorflow as tf

SHARD_GLOB = "features-*.tfrecord"
SHARD_SUFFIX = ".tfrecord"
TEMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
ERRORS = "errors.tsv"
ERRORS_HEADER = "path\treason"
# Settings that decide the features: a resumed run must match the folder's manifest on these.
COMPATIBILITY_KEYS = ("model", "input_size", "feature_dim", "sampling", "video_root")

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}


class OutputError(Exception):
  """An output folder that this run must not add to."""


def make_example(video_id: str, path: str, features: np.ndarray, num_views: int) -> bytes:
  """A serialized tf.train.Example.

  Features: `video_id` bytes, `path` bytes, `features` float list `[D]` (the mean of the model's
  pooled feature over the video's views), `num_views` int64.
  """
  example = tf.train.Example(features=tf.train.Features(feature={
      "video_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[video_id.encode()])),
      "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
      "features": tf.train.Feature(float_list=tf.train.FloatList(value=features.tolist())),
      "num_views": tf.train.Feature(int64_list=tf.train.Int64List(value=[num_views])),
  }))
  return example.SerializeToString()


def parse_example(serialized: tf.Tensor, feature_dim: Optional[int] = None) -> Dict[str, tf.Tensor]:
  """A serialized Example -> {video_id: string, path: string, features: float32 [D],
  num_views: int64}; D is static when `feature_dim` is given."""
  features = (tf.io.FixedLenFeature([feature_dim], tf.float32) if feature_dim else
              tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True))
  return tf.io.parse_single_example(serialized, {
      "video_id": tf.io.FixedLenFeature([], tf.string),
      "path": tf.io.FixedLenFeature([], tf.string),
      "features": features,
      "num_views": tf.io.FixedLenFeature([], tf.int64),
  })


def shard_paths(output_dir: str) -> List[str]:
  """The complete shards in `output_dir`, sorted."""
  return sorted(tf.io.gfile.glob(os.path.join(output_dir, SHARD_GLOB)))


def read_features(output_dir: str) -> tf.data.Dataset:
  """A dataset of `parse_example` dicts, one per extracted video, from every shard in `output_dir`.

  The feature size comes from the folder's manifest, so `features` has a static shape `[D]`.
  """
  feature_dim = (read_manifest(output_dir) or {}).get("feature_dim")
  return tf.data.TFRecordDataset(shard_paths(output_dir)).map(
      lambda serialized: parse_example(serialized, feature_dim))


def done_ids(output_dir: str) -> Set[str]:
  """The video ids stored in `output_dir`'s shards."""
  dataset = tf.data.TFRecordDataset(shard_paths(output_dir)).map(
      lambda s: tf.io.parse_single_example(s, {"video_id": tf.io.FixedLenFeature([], tf.string)}))
  return {row["video_id"].decode() for row in dataset.as_numpy_iterator()}


def remove_stale_temporaries(output_dir: str) -> None:
  """Deletes the temporary shards that an interrupted run (killed mid-write) left behind."""
  for path in tf.io.gfile.glob(os.path.join(output_dir, TEMP_PREFIX + SHARD_GLOB)):
    tf.io.gfile.remove(path)


def run_prefix() -> str:
  """`features-<UTC time>-<random>`: shard names of one run, distinct from every other run's."""
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
  return f"features-{now}-{secrets.token_hex(2)}"


class ShardWriter:
  """Writes serialized Examples in shards of `shard_size`, each made visible only when complete.

  Examples are buffered; a full buffer is written to `.tmp-<name>` and renamed to `<name>`. Use as a
  context manager: on a clean exit the last, smaller shard is written; on an exception the buffered
  examples are dropped (their videos are redone by the next run) and no temporary file stays.
  """

  def __init__(self, output_dir: str, prefix: str, shard_size: int):
    self._output_dir = output_dir
    self._prefix = prefix
    self._shard_size = shard_size
    self._buffer: List[bytes] = []
    self.shards: List[str] = []
    self.num_written = 0

  def add(self, example: bytes) -> None:
    self._buffer.append(example)
    if len(self._buffer) >= self._shard_size:
      self._write_shard()

  def _write_shard(self) -> None:
    name = f"{self._prefix}-{len(self.shards):05d}{SHARD_SUFFIX}"
    final = os.path.join(self._output_dir, name)
    temporary = os.path.join(self._output_dir, TEMP_PREFIX + name)
    try:
      with tf.io.TFRecordWriter(temporary) as writer:
        for example in self._buffer:
          writer.write(example)
      tf.io.gfile.rename(temporary, final)
    except BaseException:
      if tf.io.gfile.exists(temporary):
        tf.io.gfile.remove(temporary)
      raise
    self.shards.append(final)
    self.num_written += len(self._buffer)
    self._buffer = []

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, error_type, error, traceback) -> None:
    if error_type is None and self._buffer:
      self._write_shard()
    self._buffer = []


def _escape(text: str) -> str:
  return re.sub(r"[\\\t\n\r]", lambda m: _ESCAPES[m.group()], text)


def _unescape(text: str) -> str:
  return re.sub(r"\\(.)", lambda m: _UNESCAPES[m.group(1)], text)


def error_line(path: str, reason: str) -> str:
  """`path<TAB>reason` for errors.tsv; tabs, newlines and backslashes are backslash-escaped."""
  return f"{_escape(path)}\t{_escape(reason)}"


class ErrorLog:
  """errors.tsv of the current run, written line by line (a re-run retries failed videos, so the
  file lists the failures of the latest run). Use as a context manager."""

  def __init__(self, output_dir: str):
    self._file = tf.io.gfile.GFile(os.path.join(output_dir, ERRORS), "w")
    self._file.write(ERRORS_HEADER + "\n")
    self.count = 0

  def add(self, path: str, reason: str) -> None:
    self._file.write(error_line(path, reason) + "\n")
    self._file.flush()
    self.count += 1

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> "ErrorLog":
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()


def read_errors(output_dir: str) -> List[Tuple[str, str]]:
  """(path, reason) of each line of `output_dir`'s errors.tsv; [] when there is none."""
  path = os.path.join(output_dir, ERRORS)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    lines = f.read().splitlines()[1:]
  return [tuple(_unescape(field) for field in line.split("\t", 1)) for line in lines]


def manifest(*, model: str, input_size, feature_dim: int, sampling: dict, min_frames: int,
             video_root: str, listed: int, done: int, failed: int, complete: bool,
             runner: str) -> dict:
  """The manifest.json content.

  Args:
    model: the model handle.
    input_size: (T, H, W) of the model's input.
    feature_dim: D.
    sampling: `dataclasses.asdict` of the Sampling.
    min_frames: videos with fewer decodable frames were refused.
    video_root: video ids are paths relative to this.
    listed: videos that `--videos` gave.
    done: listed videos whose features the folder's shards hold (from this or earlier runs).
    failed: videos this run could not extract (listed in errors.tsv).
    complete: False while the run that writes it is going, or after it was interrupted.
    runner: which tool wrote the folder.
  """
  return {
      "model": model,
      "input_size": list(input_size),
      "feature_dim": feature_dim,
      "feature": "mean over the views of the serving_default 'features' output",
      "sampling": sampling,
      "min_frames": min_frames,
      "video_root": video_root,
      "videos": {"listed": listed, "done": done, "failed": failed,
                 "pending": listed - done - failed},
      "complete": complete,
      "runner": runner,
      "shard_glob": SHARD_GLOB,
      "errors": ERRORS,
  }


def read_manifest(output_dir: str) -> Optional[dict]:
  path = os.path.join(output_dir, MANIFEST)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def write_manifest(output_dir: str, content: dict) -> None:
  """Writes manifest.json whole (temporary file, then rename)."""
  path = os.path.join(output_dir, MANIFEST)
  temporary = os.path.join(output_dir, TEMP_PREFIX + MANIFEST)
  with tf.io.gfile.GFile(temporary, "w") as f:
    json.dump(content, f, indent=2, sort_keys=True)
    f.write("\n")
  tf.io.gfile.rename(temporary, path, overwrite=True)


def check_compatible(output_dir: str, content: dict) -> None:
  """Refuses to add to a folder whose features were made with other settings.

  Raises:
    OutputError: the manifest differs on a COMPATIBILITY_KEYS entry, or the folder holds shards
      without a manifest.
  """
  existing = read_manifest(output_dir)
  if existing is None:
    if shard_paths(output_dir):
      raise OutputError(f"{output_dir} holds feature shards but no {MANIFEST}")
    return
  for key in COMPATIBILITY_KEYS:
    wanted = json.loads(json.dumps(content[key]))  # As read back: tuples become lists.
    if existing.get(key) != wanted:
      raise OutputError(f"{output_dir} holds features made with {key} {existing.get(key)!r}, "
                        f"not {wanted!r}: use another --output")
