"""The output folder both extraction tools write, and how to read it back.

  OUTPUT/features-<run>-<shard>.tfrecord   tf.train.Example per video (see `make_example`)
  OUTPUT/manifest.json                     model, sampling, input size, counts (see `manifest`)
  OUTPUT/errors.tsv                        header `path<TAB>reason<TAB>run`, a line per failure
  OUTPUT/.lock                             the running tool's host and pid (see `output_lock`)

Shards are only ever visible complete: each is written under a hidden temporary name
(`.tmp-...`, which `SHARD_GLOB` does not match) and renamed when closed; Beam's file sinks do the
same through their own `beam-temp-*` folder. On gs:// a rename is a copy, and an object appears
whole when its copy finishes. The shards are the record of which videos are done: a later run
reads their `video_id`s and skips those videos. Leftover temporaries of a killed run are removed
by the next run (which holds the folder's lock, so they cannot be another run's).

errors.tsv is appended to, a line per failure with the run that wrote it, and survives
interruptions; a run that ends drops the lines of videos that are now extracted (rewriting the
file whole), so it lists every video that failed and is still missing, with each attempt.
"""

import contextlib
import datetime
import json
import os
import re
import secrets
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np
import tensorflow as tf

SHARD_GLOB = "features-*.tfrecord"
SHARD_SUFFIX = ".tfrecord"
TEMP_PREFIX = ".tmp-"
BEAM_TEMP_GLOB = "beam-temp-*"
MANIFEST = "manifest.json"
ERRORS = "errors.tsv"
ERRORS_HEADER = "path\treason\trun"
# Settings that decide the features: a resumed run must match the folder's manifest on these.
COMPATIBILITY_KEYS = ("model", "input_size", "feature_dim", "sampling", "video_root")

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}


class OutputError(Exception):
  """An output folder that this run must not add to, or cannot read or write."""


@contextlib.contextmanager
def output_errors(path: str, verb: str) -> Iterator[None]:
  """Turns a file system failure on `path` (full disk, no permission, corrupt data) into an
  OutputError `cannot <verb> <path>: <reason>`."""
  try:
    yield
  except tf.errors.OpError as error:
    raise OutputError(f"cannot {verb} {path}: {error.message}") from error
  except OSError as error:
    raise OutputError(f"cannot {verb} {path}: {error.strerror or error}") from error


def write_whole(path: str, text: str) -> None:
  """Replaces the file `path` by `text` atomically: a reader (or a kill) sees the old content or
  the new, never a part. Raises OutputError."""
  temporary = os.path.join(os.path.dirname(path), TEMP_PREFIX + os.path.basename(path))
  with output_errors(path, "write"):
    try:
      with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
      tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:
      if tf.io.gfile.exists(temporary):
        tf.io.gfile.remove(temporary)
      raise


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
  """The complete shards in `output_dir`, sorted. Raises OutputError."""
  with output_errors(output_dir, "list"):
    if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
      raise OutputError(f"cannot use {output_dir}: it is a file, not a folder")
    return sorted(tf.io.gfile.glob(os.path.join(output_dir, SHARD_GLOB)))


def read_features(output_dir: str) -> tf.data.Dataset:
  """A dataset of `parse_example` dicts, one per extracted video, from every shard in `output_dir`.

  The feature size comes from the folder's manifest, so `features` has a static shape `[D]`.
  """
  feature_dim = (read_manifest(output_dir) or {}).get("feature_dim")
  return tf.data.TFRecordDataset(shard_paths(output_dir)).map(
      lambda serialized: parse_example(serialized, feature_dim))


def stored_videos(output_dir: str) -> Dict[str, str]:
  """{video_id: path} of the videos stored in `output_dir`'s shards.

  Raises:
    OutputError: a shard is unreadable or corrupt (named in the message).
  """
  stored = {}
  spec = {"video_id": tf.io.FixedLenFeature([], tf.string),
          "path": tf.io.FixedLenFeature([], tf.string)}
  for shard in shard_paths(output_dir):
    dataset = tf.data.TFRecordDataset(shard).map(lambda s: tf.io.parse_single_example(s, spec))
    try:
      for row in dataset.as_numpy_iterator():
        stored[row["video_id"].decode()] = row["path"].decode()
    except (tf.errors.OpError, UnicodeDecodeError) as error:
      reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
      raise OutputError(f"shard {shard} is corrupt ({reason.splitlines()[0]}); move it out of "
                        "the folder to extract its videos again") from error
  return stored


def done_ids(output_dir: str) -> Set[str]:
  """The video ids stored in `output_dir`'s shards. Raises OutputError."""
  return set(stored_videos(output_dir))


def remove_stale_temporaries(output_dir: str) -> None:
  """Deletes what an interrupted run left behind: hidden temporary files (half-written shards,
  manifests, error lists) and Beam's `beam-temp-*` folders. Only call while holding the folder's
  lock: then none of them can belong to a running run."""
  with output_errors(output_dir, "clean up"):
    for path in tf.io.gfile.glob(os.path.join(output_dir, TEMP_PREFIX + "*")):
      tf.io.gfile.remove(path)
    for path in tf.io.gfile.glob(os.path.join(output_dir, BEAM_TEMP_GLOB)):
      tf.io.gfile.rmtree(path)


def run_id() -> str:
  """`<UTC time>-<random>`: names one run (its shards, its errors.tsv lines)."""
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
  return f"{now}-{secrets.token_hex(2)}"


def shard_prefix(run: str) -> str:
  """`features-<run>`: the shard names of one run, distinct from every other run's."""
  return f"features-{run}"


class ShardWriter:
  """Writes serialized Examples in shards of `shard_size`, each made visible only when complete.

  Examples are buffered; a full buffer is written to `.tmp-<name>` and renamed to `<name>`. Use as a
  context manager: on a clean exit the last, smaller shard is written; on an exception the buffered
  examples are dropped (their videos are redone by the next run) and no temporary file stays.
  A failed write (full disk...) raises OutputError.
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
    with output_errors(final, "write"):
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


def error_line(path: str, reason: str, run: str) -> str:
  """`path<TAB>reason<TAB>run` for errors.tsv; tabs, newlines and backslashes are
  backslash-escaped."""
  return f"{_escape(path)}\t{_escape(reason)}\t{_escape(run)}"


def _read_error_text(output_dir: str) -> str:
  path = os.path.join(output_dir, ERRORS)
  with output_errors(path, "read"):
    if not tf.io.gfile.exists(path):
      return ""
    with tf.io.gfile.GFile(path) as f:
      return f.read()


def _error_lines(text: str) -> List[str]:
  """The complete error lines of errors.tsv's text: the header and a torn last line (a run
  killed mid-write) are left out."""
  lines = text.split("\n")[:-1]  # What follows the last newline is incomplete.
  return [line for line in lines if line != ERRORS_HEADER]


class ErrorLog:
  """Appends `run`'s failures to errors.tsv, a flushed line each, so a killed run keeps the lines
  it wrote. Opening it drops a torn last line left by a kill. Use as a context manager; raises
  OutputError when the file cannot be written."""

  def __init__(self, output_dir: str, run: str):
    self._path = os.path.join(output_dir, ERRORS)
    self._run = run
    text = _read_error_text(output_dir)
    if not text.endswith("\n") or not text.startswith(ERRORS_HEADER + "\n"):
      write_whole(self._path, "".join(f"{line}\n" for line in
                                      [ERRORS_HEADER] + _error_lines(text)))
    with output_errors(self._path, "write"):
      self._file = tf.io.gfile.GFile(self._path, "a")
    self.count = 0

  def add(self, path: str, reason: str) -> None:
    with output_errors(self._path, "write"):
      self._file.write(error_line(path, reason, self._run) + "\n")
      self._file.flush()
    self.count += 1

  def add_lines(self, lines: Iterable[str]) -> None:
    """Appends lines made by `error_line` (for this run) elsewhere, e.g. by Beam workers."""
    with output_errors(self._path, "write"):
      for line in lines:
        self._file.write(line + "\n")
        self.count += 1
      self._file.flush()

  def close(self) -> None:
    with output_errors(self._path, "write"):
      self._file.close()

  def __enter__(self) -> "ErrorLog":
    return self

  def __exit__(self, *unused_exc_info) -> None:
    self.close()


def read_errors(output_dir: str) -> List[Tuple[str, str, str]]:
  """(path, reason, run) of each line of `output_dir`'s errors.tsv, oldest first; [] when there
  is none. Raises OutputError."""
  rows = []
  for line in _error_lines(_read_error_text(output_dir)):
    fields = tuple(_unescape(field) for field in line.split("\t"))
    if len(fields) != 3:
      raise OutputError(f"{os.path.join(output_dir, ERRORS)} is corrupt: {line!r} is not "
                        "path<TAB>reason<TAB>run")
    rows.append(fields)
  return rows


def drop_errors_of(output_dir: str, extracted_paths: Set[str]) -> None:
  """Rewrites errors.tsv (whole, atomically) without the lines of videos now extracted."""
  text = _read_error_text(output_dir)
  kept = [line for line in _error_lines(text)
          if _unescape(line.split("\t", 1)[0]) not in extracted_paths]
  write_whole(os.path.join(output_dir, ERRORS),
              "".join(f"{line}\n" for line in [ERRORS_HEADER] + kept))


def manifest(*, model: str, signature: str, input_size, feature_dim: int, sampling: dict,
             min_frames: int, video_root: str, listed: int, done: int, failed: int,
             complete: bool, runner: str) -> dict:
  """The manifest.json content.

  Args:
    model: the model handle.
    signature: the model signature that computed the features.
    input_size: (T, H, W) of the clips the model was given (the clip size).
    feature_dim: D.
    sampling: `dataclasses.asdict` of the Sampling.
    min_frames: videos with fewer decodable frames were refused.
    video_root: video ids are paths relative to this.
    listed: videos that `--videos` gave.
    done: listed videos whose features the folder's shards hold (from this or earlier runs).
    failed: listed videos not extracted that have lines in errors.tsv.
    complete: False while the run that writes it is going, or after it was interrupted.
    runner: which tool wrote the folder.
  """
  return {
      "model": model,
      "signature": signature,
      "input_size": list(input_size),
      "feature_dim": feature_dim,
      "feature": f"mean over the views of the {signature} 'features' output",
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
  """manifest.json's content; None when there is none.

  Raises:
    OutputError: it is unreadable or not a JSON object.
  """
  path = os.path.join(output_dir, MANIFEST)
  with output_errors(path, "read"):
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      text = f.read()
  try:
    content = json.loads(text)
  except ValueError as error:
    raise OutputError(f"{path} is corrupt ({error}); the features in the folder are kept, move "
                      "the folder's manifest away only if you know how they were made") from error
  if not isinstance(content, dict):
    raise OutputError(f"{path} is corrupt (not a JSON object)")
  return content


def write_manifest(output_dir: str, content: dict) -> None:
  """Writes manifest.json whole (temporary file, then rename). Raises OutputError."""
  write_whole(os.path.join(output_dir, MANIFEST),
              json.dumps(content, indent=2, sort_keys=True) + "\n")


def check_compatible(output_dir: str, content: dict) -> None:
  """Refuses to add to a folder whose features were made with other settings.

  Raises:
    OutputError: the manifest differs on a COMPATIBILITY_KEYS entry, is corrupt, or the folder
      holds shards without a manifest.
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
